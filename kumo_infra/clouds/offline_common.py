"""Offline answers shared by every cloud (see kumo_infra.offline): providers used by all components."""

from pulumi.runtime import rpc as _rpc

from ..targets import OFFLINE_PLACEHOLDER as PLACEHOLDER


def secret(value: str) -> dict:
    """A value in the engine's secret envelope, as the real engine answers an output the provider
    lists in additionalSecretOutputs (the SDK's mock monitor does not apply that list itself)."""
    return {_rpc._special_sig_key: _rpc._special_secret_sig, "value": value}


COMPUTED = {
    # pulumi_tls generates the DKIM keys and the API's TLS key at deploy time. Each form of the private
    # key has its own placeholder, so a test can tell which one reached a secret.
    "tls:index/privateKey:PrivateKey": {
        "publicKeyPem": "-----BEGIN PUBLIC KEY-----\nUExBQ0VIT0xERVI=\n-----END PUBLIC KEY-----\n",
        # The provider marks the private forms secret (pulumi_tls/private_key.py:
        # additional_secret_outputs=["privateKeyOpenssh", "privateKeyPem", "privateKeyPemPkcs8"]).
        "privateKeyPem": secret("-----BEGIN RSA PRIVATE KEY-----\nplaceholder private key of {name}\n"
                                "-----END RSA PRIVATE KEY-----\n"),
        "privateKeyPemPkcs8": secret("-----BEGIN PRIVATE KEY-----\nplaceholder PKCS#8 private key of {name}\n"
                                     "-----END PRIVATE KEY-----\n"),
    },
    # The API's self-signed certificate (pulumi_tls/self_signed_cert.py computes these). The
    # placeholder is no certificate: tests read the SANs from the recorded inputs.
    "tls:index/selfSignedCert:SelfSignedCert": {
        "certPem": "-----BEGIN CERTIFICATE-----\nplaceholder certificate of {name}\n-----END CERTIFICATE-----\n",
        "keyAlgorithm": "ECDSA",
        "readyForRenewal": False,
        "validityStartTime": PLACEHOLDER,
        "validityEndTime": PLACEHOLDER,
    },
    # pulumi_random generates the API password (and Azure's admin password) at deploy time; the
    # provider marks result and bcryptHash secret (pulumi_random/random_password.py:
    # additional_secret_outputs=["bcryptHash", "result"]).
    "random:index/randomPassword:RandomPassword": {
        "result": secret("offline-generated-password-of-{name}"),
        "bcryptHash": secret(PLACEHOLDER),
    },
}

INVOKES: dict = {}
