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
}

INVOKES = {
    "gcp:compute/getImage:getImage": {"selfLink": "projects/placeholder/global/images/placeholder",
                                      "name": PLACEHOLDER},
}
