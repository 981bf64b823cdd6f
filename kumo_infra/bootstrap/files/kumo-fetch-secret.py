#!/usr/bin/env python3
"""kumo-fetch-secret REFERENCE: print one secret, fetched with this machine's own cloud identity.

Written by kumo-infra. Standard library only (it runs before anything is installed):

  aws:<region>:<name>            Secrets Manager, with the instance role's credentials from IMDSv2
  azure:<vault url>:<name>       Key Vault, with the VM's managed identity token
  gcp:<project>:<name>           Secret Manager, with the service account token from the metadata server
  delivered:<key>                a secret kumo-infra sent over SSH, staged in /run/kumo-infra/delivered

The reference's prefix chooses the backend from one table (BACKENDS): a new target's store is one
entry. No credential is stored on disk; the cloud decides by the machine's identity. Exit 2 on a
malformed reference or environment, 1 when the secret cannot be fetched (the message says why),
3 when nothing was delivered for it in this run (the installed copy stands).

Every request goes through one opener: no proxy (the *_proxy variables are ignored: metadata
requests must never leave the machine, and a token must never pass through a proxy), no
redirect (a redirect would carry the bearer token or signed headers to another host), TLS
verified against the system's trust store.

Test mode: the KUMO_*_URL endpoint overrides, the KUMO_FETCH_SECRET_TEST_CA bundle and the
KUMO_DELIVERED_DIR staging directory exist so kumo-infra's tests can stand in for the stores.
They are read only with KUMO_FETCH_SECRET_TEST_MODE=1, endpoints only for loopback hosts, and the
script refuses to run when one is set without test mode. Nothing kumo-infra renders sets them.
Kept compatible with Python 3.6: Rocky and Alma 8 have only their platform python.
"""

import base64
import binascii
import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import re
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Dict, List, Optional, Tuple, Union

TIMEOUT = 10

TEST_MODE_VARIABLE = "KUMO_FETCH_SECRET_TEST_MODE"
TEST_CA_VARIABLE = "KUMO_FETCH_SECRET_TEST_CA"
DELIVERED_DIR_VARIABLE = "KUMO_DELIVERED_DIR"  # a directory, not an endpoint
ENDPOINT_VARIABLES = ("KUMO_AWS_METADATA_URL", "KUMO_AWS_SECRETS_URL", "KUMO_AZURE_METADATA_URL",
                      "KUMO_AZURE_VAULT_URL", "KUMO_GCP_METADATA_URL", "KUMO_GCP_SECRETS_URL")

# The backends, by a reference's prefix: (fetch the rest of the reference, or None when it is
# not of the store's form; that form). Each store's section below adds its own entry, and a
# node's copy holds only its target's section (kumo_infra/bootstrap.fetch_secret_script: every
# byte counts in AWS's user data). What a reference may look like is checked strictly: anything
# else could steer a token or signed request to another host (a region or vault URL is part of
# the host name), so it is refused.
BACKENDS = {}  # type: Dict[str, Tuple[Callable[[str], Union[str, bytes, None]], str]]


class NoIdentity(OSError):
    """The machine has no identity to read the store with (no instance role): retrying may help."""


class NotDelivered(LookupError):
    """Nothing was delivered for this secret in this run: the installed copy, if any, stands."""


class EnvironmentRefused(ValueError):
    """An endpoint override outside test mode, or one that is not on this machine."""


class RedirectRefused(urllib.error.URLError):
    def __init__(self, url: str, code: int, target: str) -> None:
        super().__init__(f"{url} answered HTTP {code} redirecting to {target}: refused (never followed, "
                         "so no token or signed request reaches another address)")


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    # A subclass of the default handler, so build_opener uses it instead of the default.
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's signature)
        raise RedirectRefused(req.full_url, code, newurl)


def test_mode() -> bool:
    return os.environ.get(TEST_MODE_VARIABLE) == "1"


def check_environment() -> None:
    overrides = [name for name in ENDPOINT_VARIABLES + (TEST_CA_VARIABLE, DELIVERED_DIR_VARIABLE)
                 if name in os.environ]
    if overrides and not test_mode():
        raise EnvironmentRefused(
            f"{overrides[0]} is set, but endpoint overrides exist only for kumo-infra's tests "
            f"({TEST_MODE_VARIABLE}=1); unset {', '.join(overrides)}")
    for name in overrides:
        if name in (TEST_CA_VARIABLE, DELIVERED_DIR_VARIABLE):
            continue
        host = urllib.parse.urlsplit(os.environ[name]).hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise EnvironmentRefused(f"{name}={os.environ[name]}: test endpoints must be on this machine "
                                     "(127.0.0.1, ::1 or localhost)")


def endpoint(variable: str, default: str) -> str:
    """The store's endpoint (or directory); a test's stand-in only in test mode."""
    return os.environ.get(variable, default) if test_mode() else default


def build_opener() -> urllib.request.OpenerDirector:
    cafile = os.environ.get(TEST_CA_VARIABLE) if test_mode() else None
    context = ssl.create_default_context(cafile=cafile)  # verifies the chain and the host name
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _RefuseRedirects(),
                                       urllib.request.HTTPSHandler(context=context))


_OPENER = None  # type: Optional[urllib.request.OpenerDirector]


def _request(url: str, *, method: str = "GET", headers: Optional[Dict[str, str]] = None,
             body: Optional[bytes] = None) -> bytes:
    global _OPENER
    if _OPENER is None:
        _OPENER = build_opener()
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with _OPENER.open(req, timeout=TIMEOUT) as response:
        return response.read()


# == backend aws: Secrets Manager ==============================================================

AWS_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+\Z")
# Secrets Manager names: letters, digits and /_+=.@- (AWS Secrets Manager API reference, CreateSecret Name).
AWS_SECRET_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}\Z")


def sigv4_headers(method: str, url: str, region: str, service: str, body: bytes, headers: Dict[str, str],
                  access_key: str, secret_key: str, amz_date: str, session_token: Optional[str] = None) -> Dict[str, str]:
    """AWS Signature Version 4: the headers to send, Authorization included."""
    parts = urllib.parse.urlsplit(url)
    signed = {k.lower(): v.strip() for k, v in headers.items()}
    signed["host"] = parts.netloc
    signed["x-amz-date"] = amz_date
    if session_token:
        signed["x-amz-security-token"] = session_token
    query = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                     for k, v in sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True)))
    names = sorted(signed)
    canonical = "\n".join([
        method, urllib.parse.quote(parts.path or "/", safe="/-_.~"), query,
        "".join(f"{n}:{signed[n]}\n" for n in names), ";".join(names), hashlib.sha256(body).hexdigest(),
    ])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret_key}".encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = {k: v for k, v in signed.items() if k != "host"}
    out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={';'.join(names)}, "
                            f"Signature={signature}")
    return out


def fetch_aws(region: str, name: str) -> str:
    imds = endpoint("KUMO_AWS_METADATA_URL", "http://169.254.169.254")
    token = _request(f"{imds}/latest/api/token", method="PUT",
                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"}).decode()
    auth = {"X-aws-ec2-metadata-token": token}
    roles = _request(f"{imds}/latest/meta-data/iam/security-credentials/", headers=auth).decode().split()
    if not roles:
        raise NoIdentity("this instance has no IAM role (instance profile) to read Secrets Manager with")
    role = roles[0]
    creds = json.loads(_request(f"{imds}/latest/meta-data/iam/security-credentials/{role}", headers=auth))
    url = endpoint("KUMO_AWS_SECRETS_URL", f"https://secretsmanager.{region}.amazonaws.com/")
    body = json.dumps({"SecretId": name}).encode()
    headers = {"content-type": "application/x-amz-json-1.1", "x-amz-target": "secretsmanager.GetSecretValue"}
    amz_date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    headers = sigv4_headers("POST", url, region, "secretsmanager", body, headers, creds["AccessKeyId"],
                            creds["SecretAccessKey"], amz_date, creds.get("Token"))
    return json.loads(_request(url, method="POST", headers=headers, body=body))["SecretString"]


def _aws(rest: str) -> Optional[str]:
    region, _, name = rest.partition(":")
    return fetch_aws(region, name) if AWS_REGION.match(region) and AWS_SECRET_NAME.match(name) else None


BACKENDS["aws"] = (_aws, "aws:REGION:NAME")


# == backend azure: Key Vault ==================================================================

# Key Vault: 3-24 letters, digits and hyphens, in Azure's public cloud (the DNS suffix kumo-infra renders).
AZURE_VAULT_URL = re.compile(r"https://[A-Za-z0-9-]{3,24}\.vault\.azure\.net/?\Z")
AZURE_SECRET_NAME = re.compile(r"[A-Za-z0-9-]{1,127}\Z")


def fetch_azure(vault_url: str, name: str) -> str:
    imds = endpoint("KUMO_AZURE_METADATA_URL", "http://169.254.169.254")
    query = urllib.parse.urlencode({"api-version": "2018-02-01", "resource": "https://vault.azure.net"})
    token = json.loads(_request(f"{imds}/metadata/identity/oauth2/token?{query}",
                                headers={"Metadata": "true"}))["access_token"]
    vault_url = endpoint("KUMO_AZURE_VAULT_URL", vault_url)
    url = f"{vault_url.rstrip('/')}/secrets/{urllib.parse.quote(name)}?api-version=7.4"
    return json.loads(_request(url, headers={"Authorization": f"Bearer {token}"}))["value"]


def _azure(rest: str) -> Optional[str]:
    vault, _, name = rest.rpartition(":")
    return fetch_azure(vault, name) if AZURE_VAULT_URL.match(vault) and AZURE_SECRET_NAME.match(name) else None


BACKENDS["azure"] = (_azure, "azure:https://VAULT.vault.azure.net:NAME")


# == backend gcp: Secret Manager ===============================================================

# GCP project ids: 6-30 lower-case letters, digits and hyphens, starting with a letter, not ending with a hyphen.
GCP_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]\Z")
GCP_SECRET_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}\Z")


def fetch_gcp(project: str, name: str) -> str:
    metadata = endpoint("KUMO_GCP_METADATA_URL", "http://metadata.google.internal")
    token = json.loads(_request(f"{metadata}/computeMetadata/v1/instance/service-accounts/default/token",
                                headers={"Metadata-Flavor": "Google"}))["access_token"]
    api = endpoint("KUMO_GCP_SECRETS_URL", "https://secretmanager.googleapis.com")
    url = f"{api}/v1/projects/{project}/secrets/{name}/versions/latest:access"
    payload = json.loads(_request(url, headers={"Authorization": f"Bearer {token}"}))["payload"]["data"]
    return base64.b64decode(payload).decode()


def _gcp(rest: str) -> Optional[str]:
    project, _, name = rest.partition(":")
    return fetch_gcp(project, name) if GCP_PROJECT.match(project) and GCP_SECRET_NAME.match(name) else None


BACKENDS["gcp"] = (_gcp, "gcp:PROJECT:NAME")


# == backend delivered: sent over SSH (the ssh target) ==========================================

# Where kumo-infra's SSH installer stages the secrets it read from its standard input (tmpfs,
# root only); kumo-bootstrap's secrets step installs them and removes the directory.
DELIVERED_DIR = "/run/kumo-infra/delivered"
DELIVERED_KEY = re.compile(r"[a-z0-9][a-z0-9-]{0,127}\Z")


def _delivered(key: str) -> Optional[bytes]:
    if not DELIVERED_KEY.match(key):
        return None
    directory = endpoint(DELIVERED_DIR_VARIABLE, DELIVERED_DIR)
    try:
        with open(os.path.join(directory, key), "rb") as staged:
            return staged.read()
    except FileNotFoundError:
        raise NotDelivered(f"delivered:{key}: nothing was delivered in this run ({directory}/{key} is absent)") \
            from None


BACKENDS["delivered"] = (_delivered, "delivered:KEY")


# == end of backends ============================================================================

def fetch(reference: str) -> Union[str, bytes]:
    prefix, _, rest = reference.partition(":")
    if prefix not in BACKENDS:
        raise ValueError(f"malformed secret reference '{reference}': unknown secret store '{prefix}' "
                         f"(known: {', '.join(sorted(BACKENDS))})")
    backend, form = BACKENDS[prefix]
    value = backend(rest)
    if value is None:
        raise ValueError(f"malformed secret reference '{reference}' ({form})")
    return value


def main(argv: List[str]) -> int:
    if len(argv) != 2:
        print("usage: kumo-fetch-secret REFERENCE", file=sys.stderr)
        return 2
    try:
        check_environment()
        value = fetch(argv[1])
    except urllib.error.HTTPError as exc:
        print(f"kumo-fetch-secret: {argv[1]}: HTTP {exc.code} {exc.reason} (does this machine's identity have "
              "read access to the secret yet? new grants can take minutes to apply)", file=sys.stderr)
        return 1
    except NotDelivered as exc:
        print(f"kumo-fetch-secret: {exc}", file=sys.stderr)
        return 3
    except RedirectRefused as exc:
        print(f"kumo-fetch-secret: {argv[1]}: {exc.reason}", file=sys.stderr)
        return 1
    # Garbled answers (JSONDecodeError, UnicodeDecodeError and binascii.Error are ValueErrors)
    # are the service's fault, not the reference's: exit 1, retried, before the ValueError below.
    except (OSError, KeyError, IndexError, json.JSONDecodeError, UnicodeDecodeError, binascii.Error) as exc:
        print(f"kumo-fetch-secret: {argv[1]}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"kumo-fetch-secret: {exc}", file=sys.stderr)
        return 2
    if isinstance(value, bytes):
        sys.stdout.buffer.write(value)  # delivered as bytes: any byte passes unchanged
    else:
        sys.stdout.write(value)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
