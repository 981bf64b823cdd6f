"""kumo-infra: run KumoMTA on AWS, Azure and GCP with Pulumi.

The pure core (config, sizing, bootstrap rendering) imports no Pulumi; cloud
components live in ``kumo_infra.clouds`` and import only their own SDK.
"""

__version__ = "0.1.0"
