"""Reuse kumo-infra's components inside your own Pulumi program.

Your program keeps its own resources and config; kumo-infra adds the mail nodes.
Switching targets is switching the class (kumo_infra.targets.<name>.component: AwsKumoMta,
AzureKumoMta, GcpKumoMta): the arguments and outputs are the same.
"""

import pulumi
import pulumi_aws as aws

from kumo_infra.targets.aws.component import AwsKumoMta

# Something your program already owns: here, the bucket where your application keeps
# the templates it injects into KumoMTA.
templates = aws.s3.Bucket("templates", force_destroy=False)

mail = AwsKumoMta(
    "mail",
    {
        # The same shape as kumo:deployment in a kumo-infra stack file.
        "deployment": {
            "cloud": "aws",
            "region": "eu-west-1",
            "name": "acme-mail",
            "hostname": "mta.acme.example",
            "os": "ubuntu22",
            "sizing": {"messages_per_hour": 400000, "avg_message_kb": 30},
            # SSH from the operators' network. Add "api_cidrs": [...] to open KumoMTA's HTTP API (TLS,
            # basic auth with a generated password) to your applications' networks; without it the API
            # listens on the node's loopback only.
            "network": {"ssh_cidrs": ["198.51.100.0/24"]},
            "kumomta": {"relay_cidrs": ["10.0.0.0/16"]},
            "dkim": {"domains": ["acme.example"]},
        },
    },
    # Your options apply to the component (providers, protect, aliases...).
    opts=pulumi.ResourceOptions(protect=False),
)

pulumi.export("templates_bucket", templates.bucket)
pulumi.export("mail_nodes", mail.nodes)
pulumi.export("mail_public_ips", mail.public_ips)
pulumi.export("mail_dns_records", mail.dns_records)
# Where the API listens and where its password is kept (never the password itself); null here.
pulumi.export("mail_api", mail.api)
