"""kumo-infra: run KumoMTA with Pulumi on AWS, Azure and GCP, or on machines that already exist (over SSH).

The pure core (config, sizing, bootstrap rendering) imports no Pulumi; each target's
component lives in ``kumo_infra.targets.<name>.component`` and imports only its own SDK
(docs/architecture.md).
"""

__version__ = "0.1.0"
