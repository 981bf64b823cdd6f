"""Offline answers for Azure (kumo_infra.offline reads them as TARGET.offline_computed and
offline_invokes): computed outputs and look-ups."""


COMPUTED = {
    "azure-native:network:PublicIPAddress": {"ipAddress": "192.0.2.{n}"},
    # Azure names auto-named resources (name plus a random suffix); offline they keep the resource name.
    "azure-native:resources:ResourceGroup": {"name": "{name}"},
    "azure-native:network:VirtualNetwork": {"name": "{name}"},
    # The private address Azure allocates on the NIC, and the VM identity's principal. ipConfigurations
    # and identity are also inputs, so these nested answers need kumo_infra.offline to fill nested keys
    # the inputs leave unset.
    "azure-native:network:NetworkInterface": {"ipConfigurations": [{"privateIPAddress": "192.0.2.{n}"}]},
    "azure-native:compute:VirtualMachine": {"identity": {"principalId": "00000000-0000-0000-0000-{n:012d}",
                                                         "tenantId": "00000000-0000-0000-0000-000000000000"}},
    # A fleet's Azure Managed Redis cluster (targets/azure/redis.py), auto-named, with its host name in the
    # cluster's region; its database, named by its input; and its private endpoint, whose name the DNS
    # zone group names.
    "azure-native:redisenterprise:RedisEnterprise": {"name": "{name}", "hostName": "{name}.{location}.redis.azure.net"},
    "azure-native:redisenterprise:Database": {"name": "{databaseName}"},
    "azure-native:network:PrivateEndpoint": {"name": "{name}"},
}

INVOKES = {
    # The Key Vault's tenant and the subscription of the "Key Vault Secrets User" role definition.
    "azure-native:authorization:getClientConfig": {"tenantId": "00000000-0000-0000-0000-000000000000",
                                                   "subscriptionId": "00000000-0000-0000-0000-000000000000",
                                                   "objectId": "00000000-0000-0000-0000-000000000000",
                                                   "clientId": "00000000-0000-0000-0000-000000000000"},
    # A database's access keys: base64, like Azure's, with the characters a URL's userinfo must escape.
    "azure-native:redisenterprise:listDatabaseKeys": {"primaryKey": "b2ZmbGluZSBwcmltYXJ5+/key=",
                                                      "secondaryKey": "b2ZmbGluZSBzZWNvbmRhcnk+/key="},
}
