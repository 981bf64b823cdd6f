"""Offline answers for AWS (see kumo_infra.offline): computed outputs and look-ups."""

PLACEHOLDER = "(placeholder)"

COMPUTED = {
    "aws:ec2/eip:Eip": {"publicIp": "192.0.2.{n}", "allocationId": "eipalloc-{n:08x}"},
    "aws:ec2/instance:Instance": {"privateIp": "10.42.1.{n}", "arn": "arn:aws:ec2:::instance/i-{n:08x}"},
}

INVOKES = {
    "aws:ec2/getAmi:getAmi": {"id": "ami-00000000placeholder", "imageId": "ami-00000000placeholder",
                              "name": PLACEHOLDER, "architecture": "x86_64"},
    "aws:index/getAvailabilityZones:getAvailabilityZones": {"names": ["zone-a", "zone-b"], "zoneIds": ["z1", "z2"]},
}
