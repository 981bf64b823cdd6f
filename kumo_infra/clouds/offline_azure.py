"""Offline answers for Azure (see kumo_infra.offline): computed outputs and look-ups."""

COMPUTED = {
    "azure-native:network:PublicIPAddress": {"ipAddress": "192.0.2.{n}"},
}

INVOKES = {
    "azure-native:authorization:getClientConfig": {"tenantId": "00000000-0000-0000-0000-000000000000",
                                                   "subscriptionId": "00000000-0000-0000-0000-000000000000",
                                                   "objectId": "00000000-0000-0000-0000-000000000000",
                                                   "clientId": "00000000-0000-0000-0000-000000000000"},
}
