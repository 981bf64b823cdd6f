"""Offline answers for GCP (kumo_infra.offline reads them as TARGET.offline_computed and
offline_invokes): computed outputs and look-ups."""

from .. import OFFLINE_PLACEHOLDER as PLACEHOLDER

COMPUTED = {
    "gcp:compute/address:Address": {"address": "192.0.2.{n}"},
    # GCP derives both from account_id and the project; offline they name the resource instead.
    "gcp:serviceaccount/account:Account": {
        "email": "{name}@placeholder.iam.gserviceaccount.com",
        "member": "serviceAccount:{name}@placeholder.iam.gserviceaccount.com",
    },
    # The internal address GCP allocates on the first NIC (networkInterfaces is also an input, so this
    # nested answer needs kumo_infra.offline to fill nested keys the inputs leave unset).
    "gcp:compute/instance:Instance": {
        "networkInterfaces": [{"networkIp": "192.0.2.{n}"}],
        # The instance's URI (its machine_id output); GCP names the instance, offline the resource name.
        "selfLink": "https://www.googleapis.com/compute/v1/projects/{project}/zones/{zone}/instances/{name}",
    },
    # A fleet's Memorystore instance (targets/gcp/redis.py): its address in the /29 Memorystore reserves,
    # the TLS port, and the AUTH string. The provider marks that secret (pulumi_gcp redis/instance.py:
    # additional_secret_outputs), which the answer leaves out: the component must not rely on it.
    "gcp:redis/instance:Instance": {
        "host": "192.0.2.250", "port": 6378, "reservedIpRange": "192.0.2.248/29",
        "authString": "offline-memorystore-auth-of-{name}",
    },
}

INVOKES = {
    "gcp:compute/getImage:getImage": {"selfLink": "projects/placeholder/global/images/placeholder",
                                      "name": PLACEHOLDER},
    # An operator's subnetwork (gcp.network), whose range a fleet's egress between the nodes names.
    "gcp:compute/getSubnetwork:getSubnetwork": {"ipCidrRange": "198.51.100.0/24", "name": PLACEHOLDER,
                                                "selfLink": PLACEHOLDER},
}
