"""Offline answers for GCP (see kumo_infra.offline): computed outputs and look-ups."""

PLACEHOLDER = "(placeholder)"

COMPUTED = {
    "gcp:compute/address:Address": {"address": "192.0.2.{n}"},
}

INVOKES = {
    "gcp:compute/getImage:getImage": {"selfLink": "projects/placeholder/global/images/placeholder",
                                      "name": PLACEHOLDER},
}
