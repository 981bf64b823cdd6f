"""AwsKumoMta under the mock engine: the whole stack program, values asserted (preview=False)."""

from __future__ import annotations

import base64
import gzip
import ipaddress
import json

import pulumi
import pulumi_aws
import pytest
import yaml

from kumo_infra import offline, program
from kumo_infra.bootstrap import render_user_data
from kumo_infra.config import parse_deployment
from kumo_infra.errors import ConfigError
from kumo_infra.stackconfig import plan_for
from kumo_infra.targets.aws import component as aws_component
from tests.conftest import ROOT, deployment

INSTANCE = "aws:ec2/instance:Instance"
EIP = "aws:ec2/eip:Eip"
PTR = "aws:ec2/eipDomainName:EipDomainName"
RECORD = "aws:route53/record:Record"
VOLUME = "aws:ebs/volume:Volume"
ATTACH = "aws:ec2/volumeAttachment:VolumeAttachment"
SG = "aws:ec2/securityGroup:SecurityGroup"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
VPC = "aws:ec2/vpc:Vpc"
SUBNET = "aws:ec2/subnet:Subnet"
IGW = "aws:ec2/internetGateway:InternetGateway"
RT = "aws:ec2/routeTable:RouteTable"
RTA = "aws:ec2/routeTableAssociation:RouteTableAssociation"
ROLE = "aws:iam/role:Role"
PROFILE = "aws:iam/instanceProfile:InstanceProfile"
SECRET = "aws:secretsmanager/secret:Secret"
VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
KEY_PAIR = "tls:index/privateKey:PrivateKey"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
COMPONENT = "kumo:index:AwsKumoMta"
NOT_TAGGABLE = {RTA, ATTACH, PTR, RECORD, VERSION, ROLE_POLICY, KEY_PAIR, RANDOM_PASSWORD,
                "tls:index/selfSignedCert:SelfSignedCert"}
TAGS = {"managed-by": "kumo-infra"}


def stack_deployment(stack: str) -> dict:
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]["kumo:deployment"]


def run(d: dict, *, preview: bool = False) -> offline.OfflineResult:
    return offline.run(program.run, {"kumo:deployment": d}, stack="t", preview=preview)


def plan_of(d: dict):
    return plan_for(parse_deployment(d))


def user_data_of(instance: offline.RecordedResource) -> str:
    return gzip.decompress(base64.b64decode(instance.inputs["userDataBase64"])).decode()


def ids(result: offline.OfflineResult, token: str) -> list[str]:
    # The mock engine's id of a resource is "<name>-id".
    return [f"{r.name}-id" for r in result.of_type(token)]


def by_name(result: offline.OfflineResult, token: str) -> dict[str, offline.RecordedResource]:
    return {r.name: r for r in result.of_type(token)}



# -- the example stacks --------------------------------------------------------------

def test_dev_stack_creates_a_minimal_public_network():
    r = run(stack_deployment("aws-dev"))
    vpc = r.one(VPC)
    assert vpc.name == "kumo-dev-network"
    assert vpc.inputs["cidrBlock"] == "10.42.0.0/16"
    assert vpc.inputs["enableDnsHostnames"] is True and vpc.inputs["enableDnsSupport"] is True
    subnet = r.one(SUBNET)
    assert subnet.inputs["vpcId"] == "kumo-dev-network-id"
    assert subnet.inputs["cidrBlock"] == "10.42.0.0/24"
    assert subnet.inputs["availabilityZone"] == "zone-a"  # first of get_availability_zones
    assert subnet.inputs["mapPublicIpOnLaunch"] is False
    assert r.one(IGW).inputs["vpcId"] == "kumo-dev-network-id"
    rt = r.one(RT)
    assert rt.inputs["vpcId"] == "kumo-dev-network-id"
    assert rt.inputs["routes"] == [{"cidrBlock": "0.0.0.0/0", "gatewayId": "kumo-dev-igw-id"}]
    rta = r.one(RTA)
    assert rta.inputs["subnetId"] == "kumo-dev-subnet-id" and rta.inputs["routeTableId"] == "kumo-dev-rt-id"
    azs = [i for i in r.invokes if i["token"] == "aws:index/getAvailabilityZones:getAvailabilityZones"]
    assert azs and azs[0]["args"] == {"state": "available"}


def test_dev_stack_machine():
    d = stack_deployment("aws-dev")
    plan = plan_of(d)
    r = run(d)
    vm = r.one(INSTANCE)
    i = vm.inputs
    assert vm.name == "kumo-dev-node1-vm"
    assert i["instanceType"] == plan.instance_type == "t3a.medium"
    assert i["ami"] == "ami-00000000placeholder"
    assert i["metadataOptions"] == {"httpTokens": "required", "httpEndpoint": "enabled", "httpPutResponseHopLimit": 1}
    assert i["rootBlockDevice"]["volumeType"] == "gp3"
    assert i["rootBlockDevice"]["encrypted"] is True
    assert i["rootBlockDevice"]["volumeSize"] == plan.os_disk_gb
    assert i["associatePublicIpAddress"] is False
    assert i["subnetId"] == "kumo-dev-subnet-id"
    assert i["vpcSecurityGroupIds"] == ["kumo-dev-firewall-id"]
    assert i["iamInstanceProfile"].startswith("kumo-dev-profile-")  # the profile's (auto-)name
    assert "keyName" not in i
    assert i["tags"]["Name"] == "mta-dev.example.com"
    eip = r.one(EIP)
    assert eip.name == "kumo-dev-node1-ip"
    assert eip.inputs["domain"] == "vpc" and eip.inputs["instance"] == "kumo-dev-node1-vm-id"
    # No zone and no forward_records_exist: neither a record nor a PTR.
    assert r.of_type(RECORD) == [] and r.of_type(PTR) == []


def test_image_lookup_filters_by_owner_name_and_architecture():
    r = run(stack_deployment("aws-dev"))
    (ami,) = [i for i in r.invokes if i["token"] == "aws:ec2/getAmi:getAmi"]
    assert ami["args"]["owners"] == ["792107900819"]
    assert ami["args"]["mostRecent"] is True
    assert ami["args"]["filters"] == [{"name": "name", "values": ["Rocky-9-EC2-Base-9.*x86_64"]},
                                      {"name": "architecture", "values": ["x86_64"]}]


def test_arm_image_uses_the_os_arch_name():
    r = run(deployment(os="ubuntu22", sizing={"instance_type": "t4g.medium"}))
    (ami,) = [i for i in r.invokes if i["token"] == "aws:ec2/getAmi:getAmi"]
    assert ami["args"]["owners"] == ["099720109477"]
    assert ami["args"]["filters"] == [
        {"name": "name", "values": ["ubuntu/images/hvm-ssd*/ubuntu-jammy-22.04-arm64-server-*"]},
        {"name": "architecture", "values": ["arm64"]}]
    assert r.one(INSTANCE).inputs["instanceType"] == "t4g.medium"


def test_user_data_is_the_gzipped_bootstrap():
    d = stack_deployment("aws-dev")
    r = run(d)
    vm = r.one(INSTANCE)
    assert "userData" not in vm.inputs  # only the compressed form is sent
    raw = base64.b64decode(vm.inputs["userDataBase64"])
    assert raw[:2] == b"\x1f\x8b" and len(raw) <= 16 * 1024
    text = user_data_of(vm)
    assert text.startswith("#cloud-config\n")
    assert "/usr/local/sbin/kumo-bootstrap" in text
    assert "fqdn: mta-dev.example.com" in text
    dep = parse_deployment(d)
    # A block spool: the bootstrap names the node's own volume by its id (the mock engine's id).
    assert text == render_user_data(dep, plan_of(d), 0, spool_volume_id="kumo-dev-node1-spool-id")


def test_block_spool_is_a_retained_encrypted_gp3_volume():
    d = stack_deployment("aws-dev")
    plan = plan_of(d)
    assert plan.spool_storage == "block"
    r = run(d)
    vol = r.one(VOLUME)
    assert vol.name == "kumo-dev-node1-spool"
    assert vol.inputs["type"] == "gp3" and vol.inputs["encrypted"] is True
    assert vol.inputs["size"] == plan.spool_gb_per_node
    assert vol.inputs["availabilityZone"] == r.one(SUBNET).inputs["availabilityZone"]
    att = r.one(ATTACH)
    assert att.inputs["deviceName"] == "/dev/sdf"
    assert att.inputs["volumeId"] == "kumo-dev-node1-spool-id"
    assert att.inputs["instanceId"] == "kumo-dev-node1-vm-id"
    assert att.inputs["stopInstanceBeforeDetaching"] is True
    assert vol.retain_on_delete is True
    assert att.name == "kumo-dev-node1-spool-attach" and att.delete_before_replace is True


def test_prod_stack_local_nvme_forward_record_and_ptr():
    d = stack_deployment("aws-prod")
    plan = plan_of(d)
    assert plan.spool_storage == "local_nvme"
    r = run(d)
    # Instance store comes with the d-type: no volume of ours.
    assert r.of_type(VOLUME) == [] and r.of_type(ATTACH) == []
    assert {vm.inputs["instanceType"] for vm in r.of_type(INSTANCE)} == {plan.instance_type}
    eips = by_name(r, EIP)
    assert len(r.of_type(RECORD)) == len(r.of_type(PTR)) == len(eips) == plan.nodes
    for node in r.outputs["nodes"]:
        prefix = f"kumo-prod-{node['name']}"
        rec = by_name(r, RECORD)[f"{prefix}-a"].inputs
        assert rec == {"zoneId": "Z0EXAMPLE12345", "name": node["hostname"], "type": "A", "ttl": 300,
                       "records": [node["public_ip"]]}
        ptr = by_name(r, PTR)[f"{prefix}-ptr"].inputs
        assert ptr["domainName"] == node["hostname"]
        assert ptr["allocationId"].startswith("eipalloc-")
        # The PTR waits for the A record of its own node.
        assert f"{prefix}-a" in by_name(r, PTR)[f"{prefix}-ptr"].depends_on_names
        assert node["ptr"] == node["hostname"] and node["forward_record"]["created"] is True
    assert r.outputs["dns_records"] == []


def test_ptr_without_zone_when_forward_records_exist():
    r = run(deployment(dns={"forward_records_exist": True}))
    assert r.of_type(RECORD) == []
    ptr = r.one(PTR)
    assert ptr.name == "kumo-test-node1-ptr" and ptr.inputs["domainName"] == "mta.example.com"
    # Its only dependency is the address it names (its allocation id): no record to wait for.
    assert ptr.depends_on_names == ["kumo-test-node1-ip"]
    (node,) = r.outputs["nodes"]
    assert node["ptr"] == "mta.example.com" and node["forward_record"]["created"] is False
    assert r.outputs["dns_records"] == [{"name": "mta.example.com", "type": "A", "value": node["public_ip"],
                                         "why": r.outputs["dns_records"][0]["why"]}]


def test_no_dns_means_no_ptr_and_a_record_to_publish():
    r = run(deployment())
    assert r.of_type(PTR) == [] and r.of_type(RECORD) == []
    (node,) = r.outputs["nodes"]
    assert node["ptr"] is None
    assert [rec["name"] for rec in r.outputs["dns_records"]] == ["mta.example.com"]


def test_three_nodes_have_their_own_machine_address_and_spool():
    d = deployment(nodes=3, dns={"zone": "example.com"}, aws={"route53_zone_id": "Z1"})
    r = run(d)
    machines = by_name(r, INSTANCE)
    assert sorted(machines) == [f"kumo-test-node{i}-vm" for i in (1, 2, 3)]
    assert sorted(by_name(r, EIP)) == [f"kumo-test-node{i}-ip" for i in (1, 2, 3)]
    assert sorted(by_name(r, VOLUME)) == [f"kumo-test-node{i}-spool" for i in (1, 2, 3)]
    assert sorted(by_name(r, PTR)) == [f"kumo-test-node{i}-ptr" for i in (1, 2, 3)]
    hostnames = [n["hostname"] for n in r.outputs["nodes"]]
    assert hostnames == ["mta1.example.com", "mta2.example.com", "mta3.example.com"]
    for i, host in enumerate(hostnames, start=1):
        vm = machines[f"kumo-test-node{i}-vm"]
        assert vm.inputs["tags"]["Name"] == host
        text = user_data_of(vm)
        assert f"fqdn: {host}" in text and "/usr/local/sbin/kumo-bootstrap" in text
        assert by_name(r, RECORD)[f"kumo-test-node{i}-a"].inputs["name"] == host
    ips = r.outputs["public_ips"]
    assert len(set(ips)) == 3 and ips == [n["public_ip"] for n in r.outputs["nodes"]]
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("192.0.2.0/24") for ip in ips)
    # Shared resources exist once (the fleet's Redis has its own security group).
    for token in (VPC, SUBNET, ROLE, PROFILE):
        r.one(token)
    assert sorted(by_name(r, SG)) == ["kumo-test-firewall", "kumo-test-redis-sg"]


# -- firewall -------------------------------------------------------------------------

def _rules(r, token):
    return {(x.inputs["ipProtocol"], x.inputs["fromPort"], x.inputs["toPort"],
             x.inputs.get("cidrIpv4") or x.inputs.get("cidrIpv6")) for x in r.of_type(token)}


SUPPORT_EGRESS = [("udp", 53), ("tcp", 53), ("udp", 123), ("tcp", 80), ("tcp", 443)]


def test_firewall_is_exactly_the_planned_rules():
    ssh = ("203.0.113.0/24", "2001:db8::/32")
    api = ("198.51.100.0/24",)
    r = run(deployment(network={"ssh_cidrs": list(ssh), "api_cidrs": list(api), "submission_ports": [587]}))
    sg = r.one(SG)
    assert "ingress" not in sg.inputs and "egress" not in sg.inputs  # no inline rules to fight with
    assert sg.inputs["vpcId"] == "kumo-test-network-id"
    world = ("0.0.0.0/0", "::/0")
    # SSH from ssh_cidrs, the API's TLS listener (8443) from api_cidrs; 8000 (loopback HTTP) never.
    assert _rules(r, INGRESS) == {("tcp", p, p, c) for p, cidrs in ((25, world), (587, world), (22, ssh),
                                                                   (8443, api)) for c in cidrs}
    # Direct delivery: 25 out, nothing else for mail (no 465, no 587).
    assert _rules(r, EGRESS) == {(proto, p, p, c) for proto, p in [("tcp", 25), *SUPPORT_EGRESS] for c in world}
    for rule in r.of_type(INGRESS) + r.of_type(EGRESS):
        assert rule.inputs["securityGroupId"] == "kumo-test-firewall-id"
        assert ("cidrIpv4" in rule.inputs) != ("cidrIpv6" in rule.inputs)
    assert "kumo-test-fw-ssh-2001_db8__-32" in by_name(r, INGRESS)
    # The API rule keeps the name it had on port 8000: an existing stack's rule is updated, not renamed.
    assert "kumo-test-fw-kumo-api-198.51.100.0-24" in by_name(r, INGRESS)


@pytest.mark.parametrize("port", [587, 2525])
def test_relay_mode_egress_is_the_relays_port_and_never_25(port):
    r = run_secrets(deployment(port25={**RELAY, "relay": {**RELAY["relay"], "port": port}}))
    world = ("0.0.0.0/0", "::/0")
    assert _rules(r, EGRESS) == {(proto, p, p, c) for proto, p in [("tcp", port), *SUPPORT_EGRESS] for c in world}


# -- network choices ------------------------------------------------------------------

def test_existing_vpc_and_subnet_are_used():
    r = run(deployment(aws={"vpc_id": "vpc-0abc", "subnet_id": "subnet-0def", "key_name": "ops"}))
    for token in (VPC, SUBNET, IGW, RT, RTA):
        assert r.of_type(token) == []
    assert r.one(SG).inputs["vpcId"] == "vpc-0abc"
    vm = r.one(INSTANCE).inputs
    assert vm["subnetId"] == "subnet-0def" and vm["keyName"] == "ops"
    (lookup,) = [i for i in r.invokes if i["token"] == "aws:ec2/getSubnet:getSubnet"]
    assert lookup["args"] == {"id": "subnet-0def"}
    assert r.one(VOLUME).inputs["availabilityZone"] == "zone-a"  # the subnet's zone (offline answer)
    assert not any(i["token"].endswith("getAvailabilityZones") for i in r.invokes)


def test_configured_availability_zone_and_vpc_cidr():
    r = run(deployment(aws={"availability_zone": "us-east-1c", "vpc_cidr": "10.9.0.0/20"}))
    assert r.one(VPC).inputs["cidrBlock"] == "10.9.0.0/20"
    assert r.one(SUBNET).inputs["cidrBlock"] == "10.9.0.0/24"
    assert r.one(SUBNET).inputs["availabilityZone"] == "us-east-1c"
    assert r.one(VOLUME).inputs["availabilityZone"] == "us-east-1c"
    assert not any(i["token"].endswith("getAvailabilityZones") for i in r.invokes)


def test_subnet_cidr():
    assert aws_component.subnet_cidr("10.42.0.0/16") == "10.42.0.0/24"
    assert aws_component.subnet_cidr("10.1.2.0/26") == "10.1.2.0/26"
    for bad in ("nonsense", "10.0.0.0/8", "2001:db8::/56"):  # refused with the config, before any plan
        with pytest.raises(ConfigError, match=r"aws\.vpc_cidr"):
            parse_deployment(deployment(aws={"vpc_cidr": bad}))


# -- bad input: an error before anything is registered ----------------------------------

@pytest.mark.parametrize("d, error, match", [
    # ConfigError from the component today; RunError once the program or the model catches these.
    (deployment(aws={"vpc_id": "vpc-0abc"}), (ConfigError, pulumi.RunError), r"kumo:deployment\.aws\.subnet_id"),
    (deployment(aws={"vpc_cidr": "10.0.0.0/8"}), (ConfigError, pulumi.RunError), r"kumo:deployment\.aws\.vpc_cidr"),
    (deployment(sizing={"messages_per_hour": 0}), pulumi.RunError, r"sizing\.messages_per_hour"),
], ids=["vpc-without-subnet", "vpc-cidr-too-big", "bad-sizing"])
def test_bad_input_fails_before_any_resource(d, error, match):
    with pytest.raises(error, match=match) as info:
        run(d)
    assert info.value.offline_resources == []


# -- lifecycle ------------------------------------------------------------------------

@pytest.mark.parametrize("replace", [False, True])
def test_bootstrap_change_replaces_only_when_asked(replace):
    r = run(deployment(nodes=2, lifecycle={"replace_on_bootstrap_change": replace}))
    for vm in r.of_type(INSTANCE):
        assert "userDataBase64" in vm.inputs  # the ignored property is the one carrying the bootstrap
        assert vm.inputs["userDataReplaceOnChange"] is replace
        assert ("userDataBase64" in vm.ignore_changes) is (not replace)
        assert "ami" in vm.ignore_changes  # a new vendor image never replaces a machine


def test_machine_options_ignore_the_bootstrap_property():
    cp_default = aws_component.prepare({"deployment": deployment()}, "aws")
    cp_replace = aws_component.prepare({"deployment": deployment(lifecycle={"replace_on_bootstrap_change": True})},
                                       "aws")
    assert aws_component.machine_options(None, cp_default, aws_component.BOOTSTRAP_PATHS).ignore_changes == [
        "userDataBase64"]
    assert aws_component.machine_options(None, cp_replace, aws_component.BOOTSTRAP_PATHS).ignore_changes == []


# -- structure, identity, outputs -----------------------------------------------------

@pytest.mark.parametrize("stack", ["aws-prod"])
def test_preview_with_unknowns_completes(stack):
    """A local NVMe spool, a zone and the API: the contract suite's preview has none of these."""
    r = run(stack_deployment(stack), preview=True)
    assert len(r.of_type(INSTANCE)) == plan_of(stack_deployment(stack)).nodes


@pytest.mark.parametrize("d", [stack_deployment("aws-dev"), stack_deployment("aws-prod"),
                               deployment(nodes=2, dns={"forward_records_exist": True})],
                         ids=["aws-dev", "aws-prod", "two-nodes-ptr"])
def test_every_taggable_child_is_tagged(d):
    r = run(d)
    name = d["name"]
    children = [x for x in r.resources if x.type != COMPONENT]
    assert children
    for x in children:
        if x.type not in NOT_TAGGABLE:
            assert x.inputs["tags"]["kumo-infra"] == name and x.inputs["tags"].items() >= TAGS.items(), x.name
    vm_root_tags = r.of_type(INSTANCE)[0].inputs["rootBlockDevice"]["tags"]
    assert vm_root_tags["kumo-infra"] == name


def test_identity_is_a_role_without_permissions():
    made = {}
    r = offline.run(lambda: made.update(mta=aws_component.AwsKumoMta("kumo-test", {"deployment": deployment()})),
                    {}, stack="t")
    role = r.one(ROLE)
    policy = json.loads(role.inputs["assumeRolePolicy"])
    assert policy["Statement"] == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                    "Action": "sts:AssumeRole"}]
    assert "managedPolicyArns" not in role.inputs and "inlinePolicies" not in role.inputs
    assert not [x for x in r.resources if x.type.startswith("aws:iam/") and x.type not in (ROLE, PROFILE)]
    profile = r.one(PROFILE)
    assert profile.inputs["role"].startswith("kumo-test-identity-")
    assert r.one(INSTANCE).inputs["iamInstanceProfile"].startswith("kumo-test-profile-")
    assert isinstance(made["mta"].role, pulumi_aws.iam.Role)


def test_private_ip_is_the_instances_and_public_ip_the_elastic_ips():
    r = run(stack_deployment("aws-dev"))
    (node,) = r.outputs["nodes"]
    assert ipaddress.ip_address(node["private_ip"]) in ipaddress.ip_network("192.0.2.0/24")
    assert node["public_ip"] != node["private_ip"]


# -- secrets (issue 5) ------------------------------------------------------------------

PASSWORD = "s3cr3t-relay-pw"
RELAY = {"outbound": "relay", "relay": {"host": "smtp.example.net", "username": "kumo"}}
DKIM_DOMAINS = ["example.com", "mail.example.org"]
GET_SECRET = "secretsmanager:GetSecretValue"
# A deployment with secrets carries kumo-fetch-secret, and with the shaping/TSA policy its bootstrap
# no longer fits AWS's 16 KiB of user data: the shared node files are kept in Secrets Manager too
# (aws component's node_files_in_store), a stored secret the role reads but not one of the deployment's.
NODE_FILES_STORE = "kumo-infra/kumo-test/node-files"
NODE_FILES_SECRET = "kumo-test-node-files-secret"


def run_secrets(d: dict, *, password: str | None = PASSWORD, preview: bool = False) -> offline.OfflineResult:
    """The whole stack program, with the relay password when given."""
    config = {"kumo:deployment": d}
    if password is not None:
        config["kumo:relayPassword"] = password
    return offline.run(program.run, config, stack="t", secret_keys=["kumo:relayPassword"] if password else [],
                       preview=preview)


def arn_names(arns: list[str]) -> list[str]:
    """The Secret resources an offline ARN names (kumo_infra/targets/aws/offline.py: the resource's name
    and a suffix where Secrets Manager puts its random one)."""
    return sorted(arn.split(":secret:", 1)[1].rsplit("-", 1)[0] for arn in arns)


def relay_dkim() -> dict:
    return deployment(port25=RELAY, dkim={"domains": DKIM_DOMAINS})


def secret_value(version: offline.RecordedResource) -> str:
    value = version.inputs["secretString"]
    # Recorded as the engine's secret envelope: {<signature>: <secret sig>, "value": ...}.
    assert isinstance(value, dict) and len(value) == 2, "secretString must be sent as a Pulumi secret"
    return value["value"]


def test_relay_and_dkim_secrets_are_stored():
    d = relay_dkim()
    r = run_secrets(d)
    keys = ["relay-password", "dkim-example-com-kumo", "dkim-mail-example-org-kumo"]
    names = [f"kumo-infra/kumo-test/{k}" for k in keys]
    secrets = by_name(r, SECRET)
    assert sorted(secrets) == sorted([*(f"kumo-test-{k}-secret" for k in keys), NODE_FILES_SECRET])
    assert secrets[NODE_FILES_SECRET].inputs["name"] == NODE_FILES_STORE
    for key, store in zip(keys, names):
        inputs = secrets[f"kumo-test-{key}-secret"].inputs
        assert inputs["name"] == store and inputs["recoveryWindowInDays"] == 7
        assert inputs["region"] == "us-east-1"  # the region secretspec.reference names
        assert "policy" not in inputs and "kmsKeyId" not in inputs  # no resource policy; AWS-managed key
        version = by_name(r, VERSION)[f"kumo-test-{key}-version"].inputs
        assert version["secretId"] == f"kumo-test-{key}-secret-id"
        assert version["region"] == "us-east-1"
    assert len(r.of_type(VERSION)) == 3 + 1  # and the node files
    assert secret_value(by_name(r, VERSION)["kumo-test-relay-password-version"]) == PASSWORD
    # One RSA key pair per DKIM domain, its private half the DKIM secret's value.
    assert sorted(by_name(r, KEY_PAIR)) == ["kumo-test-dkim-example-com-kumo", "kumo-test-dkim-mail-example-org-kumo"]
    for key in r.of_type(KEY_PAIR):
        assert key.inputs == {"algorithm": "RSA", "rsaBits": 2048}
    for key in keys[1:]:
        assert "PRIVATE KEY-----" in secret_value(by_name(r, VERSION)[f"kumo-test-{key}-version"])
    assert r.outputs["secret_names"] == names
    # What the node fetches at boot (secrets.list in its user data) is exactly what was stored.
    files = {f["path"]: f["content"] for f in yaml.safe_load(user_data_of(r.one(INSTANCE)))["write_files"]}
    listed = [line.split("\t")[0] for line in files["/etc/kumo-infra/secrets.list"].splitlines()
              if not line.startswith("#")]
    assert listed == [f"aws:us-east-1:{store}" for store in names]


def test_role_reads_exactly_its_secrets():
    r = run_secrets(relay_dkim())
    grant = r.one(ROLE_POLICY)
    assert grant.name == "kumo-test-secrets-access"
    assert grant.inputs["role"] == r.one(PROFILE).inputs["role"]  # the instance role, by its name
    assert grant.inputs["role"].startswith("kumo-test-identity-")
    document = json.loads(grant.inputs["policy"])
    (statement,) = document["Statement"]
    assert set(statement) == {"Sid", "Effect", "Action", "Resource"}  # no NotAction/NotResource/Condition
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == [GET_SECRET]
    assert all(a.startswith("arn:aws:secretsmanager:") for a in statement["Resource"])
    # The relay password, two DKIM keys and the node files: each by its exact ARN.
    assert arn_names(statement["Resource"]) == sorted(x.name for x in r.of_type(SECRET)) and len(r.of_type(SECRET)) == 4
    assert NODE_FILES_SECRET in arn_names(statement["Resource"])
    assert not any("*" in a for a in statement["Resource"])
    # Nothing else grants the role anything.
    role = r.one(ROLE)
    assert "managedPolicyArns" not in role.inputs and "inlinePolicies" not in role.inputs
    assert {x.type for x in r.resources if x.type.startswith("aws:iam/")} == {ROLE, PROFILE, ROLE_POLICY}


def test_dkim_only_deployment_stores_only_the_keys():
    r = run_secrets(deployment(dkim={"domains": ["example.com"]}), password=None)
    # Its key, and the node files its bootstrap (with kumo-fetch-secret) cannot carry: no relay password.
    assert sorted(x.inputs["name"] for x in r.of_type(SECRET)) == ["kumo-infra/kumo-test/dkim-example-com-kumo",
                                                                   NODE_FILES_STORE]
    (statement,) = json.loads(r.one(ROLE_POLICY).inputs["policy"])["Statement"]
    assert arn_names(statement["Resource"]) == ["kumo-test-dkim-example-com-kumo-secret", NODE_FILES_SECRET]
    assert r.outputs["secret_names"] == ["kumo-infra/kumo-test/dkim-example-com-kumo"]
    assert r.of_type(RANDOM_PASSWORD) == [] and r.outputs["api"] is None  # no api_cidrs: no API password


# -- the HTTP API's credentials (issue 8, point 6) ---------------------------------------------

API_STORE = "kumo-infra/kumo-test/api-password"
API_VERSION = "kumo-test-api-password-version"
# What the offline engine answers for the generated password (clouds/offline_common.py).
API_PW = "offline-generated-password-of-kumo-test-api-password"


# What every fleet (more than one node) stores besides: its Redis URL and its peer list (kumo_infra.fleet).
FLEET_STORES = ["kumo-infra/kumo-test/fleet-peers", "kumo-infra/kumo-test/redis-url"]


def with_api(**extra) -> dict:
    return deployment(network={"ssh_cidrs": ["198.51.100.10/32"], "api_cidrs": ["198.51.100.0/24"]}, **extra)


def test_api_password_is_generated_and_stored_like_the_other_secrets():
    r = run_secrets(with_api(nodes=2), password=None)
    # Besides the fleet's Redis AUTH token (tests/test_managed_redis.py).
    assert sorted(by_name(r, RANDOM_PASSWORD)) == ["kumo-test-api-password", "kumo-test-redis-auth-token"]
    generated = by_name(r, RANDOM_PASSWORD)["kumo-test-api-password"]
    assert generated.parent == "kumo-test"
    assert generated.inputs == {"length": 40, "special": False, "minUpper": 1, "minLower": 1, "minNumeric": 1}
    secrets = {x.inputs["name"]: x for x in r.of_type(SECRET)}
    # the password, and the API listener's certificate and key (tests/test_api_tls_aws.py), the
    # fleet's Redis URL and peer list, and the node files the user data cannot carry
    assert sorted(secrets) == sorted([API_STORE, "kumo-infra/kumo-test/api-tls-cert",
                                      "kumo-infra/kumo-test/api-tls-key", *FLEET_STORES, NODE_FILES_STORE])
    assert secret_value(by_name(r, VERSION)[API_VERSION]) == API_PW
    # The role reads it by its exact ARN, like the DKIM key; nothing else grants it.
    (statement,) = json.loads(r.one(ROLE_POLICY).inputs["policy"])["Statement"]
    assert arn_names(statement["Resource"]) == sorted(x.name for x in r.of_type(SECRET))
    assert "kumo-test-api-password-secret" in arn_names(statement["Resource"])
    # The node fetches it at boot into the path the policy reads, by the reference in secrets.list.
    for vm in r.of_type(INSTANCE):
        files = {f["path"]: f["content"] for f in yaml.safe_load(user_data_of(vm))["write_files"]}
        listing = files["/etc/kumo-infra/secrets.list"].splitlines()
        assert f"aws:us-east-1:{API_STORE}\t/opt/kumomta/etc/secrets/api-password" in listing


def test_api_output_says_how_to_reach_the_api():
    r = run_secrets(with_api(nodes=2), password=None)
    api = r.outputs["api"]
    nodes = r.outputs["nodes"]
    assert len(nodes) == 2
    assert api["endpoints"] == [{"hostname": n["hostname"], "url": f"https://{n['hostname']}:8443",
                                 "ip_url": f"https://{n['public_ip']}:8443"} for n in nodes]
    assert api["user"] == "kumo-api"
    assert api["secret_name"] == API_STORE
    assert api["secret_reference"] == f"aws:us-east-1:{API_STORE}"
    assert api["read_password"] == (f"aws secretsmanager get-secret-value --region us-east-1 --secret-id {API_STORE} "
                                    "--query SecretString --output text")
    assert api["allowed_from"] == ["198.51.100.0/24"]
    assert "self-signed" in api["tls"]


def test_no_api_cidrs_no_api_output_and_no_password():
    r = run_secrets(stack_deployment("aws-dev"), password=None)
    assert r.outputs["api"] is None
    assert r.of_type(RANDOM_PASSWORD) == [] and r.of_type(SECRET) == []
    assert 8443 not in {x.inputs["fromPort"] for x in r.of_type(INGRESS)}


# -- the block spool is named by its volume id (issue 8, point 4) ------------------------------

def test_user_data_names_the_spool_volume_by_its_id():
    r = run(deployment(nodes=2))
    for vm in r.of_type(INSTANCE):
        key = vm.name.split("-")[-2]  # node1, node2
        volume = by_name(r, VOLUME)[f"kumo-test-{key}-spool"]
        volume_id = f"{volume.name}-id"  # the mock engine's id of that volume
        env = {f["path"]: f["content"] for f in yaml.safe_load(user_data_of(vm))["write_files"]}[
            "/etc/kumo-infra/bootstrap.env"]
        by_id = f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{volume_id.replace('-', '')}"
        assert by_id in env
        # Its own volume only: the other node's is not named.
        other = next(v for v in r.of_type(VOLUME) if v is not volume)
        assert f"{other.name}-id".replace("-", "") not in env
        # The machine waits for its volume (the id is an input), never the reverse: no cycle.
        assert volume.name in vm.depends_on_names
        assert vm.name not in volume.depends_on_names


def test_naming_the_volume_does_not_replace_existing_machines(monkeypatch):
    """A stack deployed by the previous release (user data without the volume id) plans the same
    resources, and its machines differ only in the user data, which the engine is told to ignore."""
    d = deployment(nodes=2)
    new = run(d)
    from kumo_infra.bootstrap import render_user_data as render

    # The previous release's user data: the same, without the volume's id. (A fleet has secrets, so
    # its shared node files come from Secrets Manager either way: that part is kept.)
    monkeypatch.setattr(aws_component, "render_user_data",
                        lambda dep, plan, index, spool_volume_id=None, node_files_from=None:
                        render(dep, plan, index, node_files_from=node_files_from))
    old = run(d)
    assert sorted((x.type, x.name) for x in old.resources) == sorted((x.type, x.name) for x in new.resources)
    for before in old.resources:
        after = next(x for x in new.resources if (x.type, x.name) == (before.type, before.name))
        changed = {k for k in set(before.inputs) | set(after.inputs) if before.inputs.get(k) != after.inputs.get(k)}
        if before.type == INSTANCE:
            assert changed == {"userDataBase64"}
            assert "userDataBase64" in after.ignore_changes
            assert after.inputs["userDataReplaceOnChange"] is False
        else:
            assert changed == set(), (before.name, changed)


def test_opting_in_lets_the_bootstrap_replace_machines():
    r = run(deployment(lifecycle={"replace_on_bootstrap_change": True}))
    vm = r.one(INSTANCE)
    assert "userDataBase64" not in vm.ignore_changes
    assert vm.inputs["userDataReplaceOnChange"] is True


def test_local_nvme_user_data_names_no_volume():
    r = run(stack_deployment("aws-prod"))
    for vm in r.of_type(INSTANCE):
        env = {f["path"]: f["content"] for f in yaml.safe_load(user_data_of(vm))["write_files"]}[
            "/etc/kumo-infra/bootstrap.env"]
        assert "Amazon_Elastic_Block_Store" not in env


# -- AWS's 16 KiB user-data limit (issue 8, point 11) ------------------------------------------

def too_many_dkim_domains(count: int = 150) -> list[str]:
    """Domain names that compress badly: enough of them push the bootstrap past 16 KiB gzip-compressed."""
    import random
    import string

    rnd = random.Random(8)
    return ["".join(rnd.choice(string.ascii_lowercase) for _ in range(30)) + ".example" for _ in range(count)]


def test_user_data_above_16_kib_is_refused_by_plan_with_exit_2(tmp_path):
    from tests.test_cli import assert_bad_input, kumo

    # So many that even the per-node part (the policy's key table, secrets.list) does not fit.
    d = deployment(dkim={"domains": too_many_dkim_domains(400)})
    config = tmp_path / "Pulumi.big.yaml"
    config.write_text(yaml.safe_dump({"config": {"kumo:deployment": d}}))
    result = kumo("plan", "--config", str(config))
    assert_bad_input(result, "kumo:deployment", "bytes compressed", "16384 bytes of user data", "dkim.domains")
    assert result.stdout == ""


@pytest.mark.parametrize("spool", ["block", "local_nvme"])
def test_user_data_above_16_kib_is_refused_before_any_resource(spool):
    extra = {} if spool == "block" else {"sizing": {"profile": "performance"}}
    d = deployment(dkim={"domains": too_many_dkim_domains(400)}, **extra)
    with pytest.raises(pulumi.RunError, match=r"AWS accepts at most 16384 bytes of user data") as info:
        run(d)
    assert info.value.offline_resources == []


def test_a_bootstrap_too_big_for_the_user_data_takes_its_shared_files_from_secrets_manager():
    import hashlib

    from kumo_infra.bootstrap import PER_NODE_FILES, node_files_bundle
    d = deployment(nodes=2, dkim={"domains": too_many_dkim_domains(60)})
    r = run_secrets(d, password=None)
    bundle_secret = by_name(r, SECRET)["kumo-test-node-files-secret"]
    assert bundle_secret.inputs["name"] == "kumo-infra/kumo-test/node-files"
    stored = secret_value(by_name(r, VERSION)["kumo-test-node-files-version"])
    expected = node_files_bundle(parse_deployment(d), plan_of(d))
    assert stored == expected.text
    # The role may read it (exact ARN), like the deployment's secrets.
    policy = json.loads(by_name(r, ROLE_POLICY)["kumo-test-secrets-access"].inputs["policy"])
    assert "kumo-test-node-files-secret" in arn_names(policy["Statement"][0]["Resource"])
    # Not one of the deployment's secrets: the output that lists those does not name it.
    assert "kumo-infra/kumo-test/node-files" not in r.outputs["secret_names"]
    for vm in r.of_type(INSTANCE):
        packed = base64.b64decode(vm.inputs["userDataBase64"])
        assert len(packed) <= aws_component.AWS_USER_DATA_LIMIT
        doc = yaml.safe_load(gzip.decompress(packed))
        # Fetched and checked first, as data (an argument list, no shell), then the bootstrap.
        assert doc["runcmd"] == [["/usr/local/sbin/kumo-node-files", "aws:us-east-1:kumo-infra/kumo-test/node-files",
                                  hashlib.sha256(stored.encode()).hexdigest()],
                                 ["/usr/local/sbin/kumo-bootstrap", "all"]]
        carried = {f["path"] for f in doc["write_files"]}
        assert carried == {*PER_NODE_FILES, "/usr/local/sbin/kumo-node-files"}
        assert not carried & set(expected.paths)
        # The machine boots only once the bundle is stored and readable.
        assert {"kumo-test-node-files-version", "kumo-test-secrets-access"} <= set(vm.depends_on_names)


def test_a_bootstrap_that_fits_carries_every_file_and_stores_none():
    from kumo_infra.bootstrap import node_files

    # Without secrets: no kumo-fetch-secret, and the whole bootstrap fits the user data.
    d = deployment()
    r = run(d)
    assert r.of_type(SECRET) == [] and r.of_type(ROLE_POLICY) == []
    vm = r.one(INSTANCE)
    doc = yaml.safe_load(user_data_of(vm))
    assert doc["runcmd"] == [["/usr/local/sbin/kumo-bootstrap", "all"]]
    carried = {f["path"] for f in doc["write_files"]}
    expected = node_files(parse_deployment(d), plan_of(d), "mta.example.com", spool_volume_id=f"{r.one(VOLUME).name}-id")
    assert carried == {f.path for f in expected}
    assert "/usr/local/sbin/kumo-bootstrap" in carried and "/usr/local/sbin/kumo-fetch-secret" not in carried


def test_user_data_limit_is_aws_16_kib():
    assert aws_component.AWS_USER_DATA_LIMIT == 16384


def test_user_data_check_refuses_one_byte_over_and_keeps_room_for_the_volume_id():
    cp = aws_component.prepare({"deployment": deployment()}, "aws")
    node = cp.nodes[0]
    size = len(base64.b64decode(aws_component.user_data_base64(node, aws_component.VOLUME_ID_EXAMPLE)))
    room = aws_component.AWS_USER_DATA_LIMIT - size
    assert room > 0, "the plain test deployment must fit AWS's limit for this test to mean anything"
    aws_component.user_data_base64(node, aws_component.VOLUME_ID_EXAMPLE, reserve=room)  # exactly fits
    with pytest.raises(ConfigError, match=rf"{room + 1} of them kept for the spool volume's id"):
        aws_component.user_data_base64(node, aws_component.VOLUME_ID_EXAMPLE, reserve=room + 1)


def test_volume_id_slack_covers_how_real_ids_compress():
    """The check before any resource renders VOLUME_ID_EXAMPLE; a real id compresses within the slack."""
    import random

    cp = aws_component.prepare({"deployment": deployment(dkim={"domains": too_many_dkim_domains(40)})}, "aws")
    node = cp.nodes[0]

    def size(volume_id):
        return len(base64.b64decode(aws_component.user_data_base64(node, volume_id, reserve=-10**6)))

    example = size(aws_component.VOLUME_ID_EXAMPLE)
    rnd = random.Random(4)
    for _ in range(40):
        volume_id = "vol-" + "".join(rnd.choice("0123456789abcdef") for _ in range(17))
        assert size(volume_id) - example < aws_component.VOLUME_ID_SLACK


def test_machines_wait_for_the_secrets_and_the_grant():
    r = run_secrets(deployment(nodes=2, port25=RELAY, dkim={"domains": DKIM_DOMAINS}))
    machines, versions, grants = r.of_type(INSTANCE), r.of_type(VERSION), r.of_type(ROLE_POLICY)
    # The relay password, two DKIM keys, the fleet's stores and the node files' bundle.
    assert len(machines) == 2 and len(versions) == 3 + len(FLEET_STORES) + 1 and len(grants) == 1
    assert "kumo-test-node-files-version" in {x.name for x in versions}
    # All but the peer list, made of the machines' own addresses (NodeSecret.machines_wait).
    needed = {x.urn for x in versions + grants if x.name != "kumo-test-fleet-peers-version"}
    assert len(needed) == len(versions)
    for vm in machines:
        assert needed <= set(vm.dependencies)


def test_the_bootstrap_names_each_secret_by_its_reference():
    r = run_secrets(relay_dkim())
    assert "kumo-infra/kumo-test/relay-password" in user_data_of(r.one(INSTANCE))  # the reference only


def test_deliverability_records_spf_dmarc_and_dkim():
    r = run_secrets(relay_dkim())
    (ip,) = r.outputs["public_ips"]
    records = {(rec["name"], rec["type"]): rec["value"] for rec in r.outputs["deliverability_records"]}
    assert len(records) == 6
    for domain in DKIM_DOMAINS:
        spf = records[(domain, "TXT")]
        assert spf.startswith("v=spf1 ") and f"ip4:{ip}" in spf and "smtp.example.net" in spf
        assert spf.endswith(" -all")
        assert records[(f"_dmarc.{domain}", "TXT")].startswith("v=DMARC1; p=none")
        assert records[(f"kumo._domainkey.{domain}", "TXT")].startswith("v=DKIM1; k=rsa; p=")


def test_direct_mode_without_dkim_has_no_secret_store_at_all():
    r = run_secrets(deployment(), password=None)
    for token in (SECRET, VERSION, ROLE_POLICY, KEY_PAIR):
        assert r.of_type(token) == [], token
    assert not [x for x in r.resources if x.type.startswith("aws:secretsmanager/")]
    assert {x.type for x in r.resources if x.type.startswith("aws:iam/")} == {ROLE, PROFILE}
    assert r.outputs["secret_names"] == [] and r.outputs["deliverability_records"] == []


def test_secret_store_preview_completes_with_unknown_arns():
    r = run_secrets(relay_dkim(), preview=True)
    assert len(r.of_type(SECRET)) == 3 + 1 and r.one(ROLE_POLICY)  # and the node files' bundle
    assert r.outputs["secret_names"] == [f"kumo-infra/kumo-test/{k}" for k in
                                         ("relay-password", "dkim-example-com-kumo", "dkim-mail-example-org-kumo")]
