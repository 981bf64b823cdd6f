"""Offline answers shared by every cloud (see kumo_infra.offline): providers used by all components."""

PLACEHOLDER = "(placeholder)"

COMPUTED = {
    # pulumi_tls generates keys at deploy time (DKIM keys, Azure's SSH key when none is given).
    "tls:index/privateKey:PrivateKey": {
        "publicKeyOpenssh": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlaceholderPlaceholderPlaceholder00000 {name}",
        "privateKeyOpenssh": PLACEHOLDER,
        "publicKeyPem": "-----BEGIN PUBLIC KEY-----\nUExBQ0VIT0xERVI=\n-----END PUBLIC KEY-----\n",
        "privateKeyPem": "-----BEGIN RSA PRIVATE KEY-----\nplaceholder private key of {name}\n"
                         "-----END RSA PRIVATE KEY-----\n",
    },
}

INVOKES: dict = {}
