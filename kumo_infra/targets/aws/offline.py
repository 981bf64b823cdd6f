"""Offline answers for AWS (kumo_infra.offline reads them as TARGET.offline_computed and
offline_invokes): computed outputs and look-ups.

Only what AwsKumoMta reads: the computed outputs it passes on (addresses, the
allocation id, the names of auto-named IAM resources) and every data source it
calls. Addresses are from 192.0.2.0/24 (RFC 5737), never a real host.
"""

from .. import OFFLINE_PLACEHOLDER as PLACEHOLDER

COMPUTED = {
    "aws:ec2/eip:Eip": {"publicIp": "192.0.2.{n}", "allocationId": "eipalloc-{n:08x}"},
    "aws:ec2/instance:Instance": {"privateIp": "192.0.2.{n}", "arn": "arn:aws:ec2:::instance/i-{n:08x}"},
    # Auto-named: the real name is the resource name plus a random suffix.
    "aws:iam/role:Role": {"name": "{name}-{n:07x}", "arn": "arn:aws:iam::000000000000:role/{name}-{n:07x}"},
    "aws:iam/instanceProfile:InstanceProfile": {
        "name": "{name}-{n:07x}", "arn": "arn:aws:iam::000000000000:instance-profile/{name}-{n:07x}"},
    # Secrets Manager appends "-" and six random characters to the secret's name in its ARN; the
    # instance role's policy names these exact ARNs. Offline: the resource name, region "placeholder".
    "aws:secretsmanager/secret:Secret": {
        "arn": "arn:aws:secretsmanager:placeholder:000000000000:secret:{name}-{n:06x}"},
    # A fleet's Redis (targets/aws/redis.py): the subnet group is auto-named, and the primary endpoint
    # is a name ElastiCache gives (master.<group id>.<suffix>.cache.amazonaws.com), here under .invalid.
    "aws:elasticache/subnetGroup:SubnetGroup": {"name": "{name}-{n:07x}"},
    "aws:elasticache/replicationGroup:ReplicationGroup": {
        "primaryEndpointAddress": "master.{name}-{n:07x}.offline.invalid",
        "arn": "arn:aws:elasticache:placeholder:000000000000:replicationgroup:{name}-{n:07x}"},
}

INVOKES = {
    "aws:ec2/getAmi:getAmi": {"id": "ami-00000000placeholder", "imageId": "ami-00000000placeholder",
                              "name": PLACEHOLDER, "architecture": "x86_64"},
    "aws:index/getAvailabilityZones:getAvailabilityZones": {"names": ["zone-a", "zone-b"], "zoneIds": ["z1", "z2"]},
    # An operator-given subnet (aws.subnet_id): the spool volume goes in its zone.
    "aws:ec2/getSubnet:getSubnet": {"availabilityZone": "zone-a", "availabilityZoneId": "z1",
                                    "vpcId": PLACEHOLDER, "cidrBlock": "192.0.2.0/24"},
}
