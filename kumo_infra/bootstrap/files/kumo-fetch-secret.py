#!/usr/bin/env python3
"""kumo-fetch-secret REFERENCE: print one secret, fetched with this machine's own cloud identity.

Written by kumo-infra. Standard library only (it runs before anything is installed):

  aws:<region>:<name>            Secrets Manager, with the instance role's credentials from IMDSv2
  azure:<vault url>:<name>       Key Vault, with the VM's managed identity token
  gcp:<project>:<name>           Secret Manager, with the service account token from the metadata server

No credential is stored on disk; the cloud decides by the machine's identity. Exit 2 on a
malformed reference, 1 when the secret cannot be fetched (the message says why).
The endpoint variables (KUMO_*_URL) exist so the tests can stand in for the clouds.
Kept compatible with Python 3.6: Rocky and Alma 8 have only their platform python.
"""

import base64
import datetime
import hashlib
import hmac
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List, Optional

TIMEOUT = 10


def _request(url: str, *, method: str = "GET", headers: Optional[Dict[str, str]] = None,
             body: Optional[bytes] = None) -> bytes:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as response:  # noqa: S310 (fixed schemes)
        return response.read()


# -- AWS ---------------------------------------------------------------------------------

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
    imds = os.environ.get("KUMO_AWS_METADATA_URL", "http://169.254.169.254")
    token = _request(f"{imds}/latest/api/token", method="PUT",
                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"}).decode()
    auth = {"X-aws-ec2-metadata-token": token}
    role = _request(f"{imds}/latest/meta-data/iam/security-credentials/", headers=auth).decode().split()[0]
    creds = json.loads(_request(f"{imds}/latest/meta-data/iam/security-credentials/{role}", headers=auth))
    url = os.environ.get("KUMO_AWS_SECRETS_URL", f"https://secretsmanager.{region}.amazonaws.com/")
    body = json.dumps({"SecretId": name}).encode()
    headers = {"content-type": "application/x-amz-json-1.1", "x-amz-target": "secretsmanager.GetSecretValue"}
    amz_date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    headers = sigv4_headers("POST", url, region, "secretsmanager", body, headers, creds["AccessKeyId"],
                            creds["SecretAccessKey"], amz_date, creds.get("Token"))
    return json.loads(_request(url, method="POST", headers=headers, body=body))["SecretString"]


# -- Azure -------------------------------------------------------------------------------

def fetch_azure(vault_url: str, name: str) -> str:
    imds = os.environ.get("KUMO_AZURE_METADATA_URL", "http://169.254.169.254")
    query = urllib.parse.urlencode({"api-version": "2018-02-01", "resource": "https://vault.azure.net"})
    token = json.loads(_request(f"{imds}/metadata/identity/oauth2/token?{query}",
                                headers={"Metadata": "true"}))["access_token"]
    vault_url = os.environ.get("KUMO_AZURE_VAULT_URL", vault_url)
    url = f"{vault_url.rstrip('/')}/secrets/{urllib.parse.quote(name)}?api-version=7.4"
    return json.loads(_request(url, headers={"Authorization": f"Bearer {token}"}))["value"]


# -- GCP ---------------------------------------------------------------------------------

def fetch_gcp(project: str, name: str) -> str:
    metadata = os.environ.get("KUMO_GCP_METADATA_URL", "http://metadata.google.internal")
    token = json.loads(_request(f"{metadata}/computeMetadata/v1/instance/service-accounts/default/token",
                                headers={"Metadata-Flavor": "Google"}))["access_token"]
    api = os.environ.get("KUMO_GCP_SECRETS_URL", "https://secretmanager.googleapis.com")
    url = f"{api}/v1/projects/{project}/secrets/{name}/versions/latest:access"
    payload = json.loads(_request(url, headers={"Authorization": f"Bearer {token}"}))["payload"]["data"]
    return base64.b64decode(payload).decode()


def fetch(reference: str) -> str:
    cloud, _, rest = reference.partition(":")
    if cloud == "aws":
        region, _, name = rest.partition(":")
        if region and name:
            return fetch_aws(region, name)
    elif cloud == "azure":
        vault, _, name = rest.rpartition(":")
        if vault.startswith("https://") and name:
            return fetch_azure(vault, name)
    elif cloud == "gcp":
        project, _, name = rest.partition(":")
        if project and name:
            return fetch_gcp(project, name)
    raise ValueError(f"malformed secret reference '{reference}' (aws:REGION:NAME, azure:VAULT_URL:NAME, "
                     "gcp:PROJECT:NAME)")


def main(argv: List[str]) -> int:
    if len(argv) != 2:
        print("usage: kumo-fetch-secret REFERENCE", file=sys.stderr)
        return 2
    try:
        value = fetch(argv[1])
    except ValueError as exc:
        print(f"kumo-fetch-secret: {exc}", file=sys.stderr)
        return 2
    except urllib.error.HTTPError as exc:
        print(f"kumo-fetch-secret: {argv[1]}: HTTP {exc.code} {exc.reason} (does this machine's identity have "
              "read access to the secret yet? new grants can take minutes to apply)", file=sys.stderr)
        return 1
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        print(f"kumo-fetch-secret: {argv[1]}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(value)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
