"""The management ports of a KumoMTA node, in one place the pure modules can import.

Standard library only: the policy pack (kumo_infra.guardrails) reads them in an environment without
pydantic, while the firewall plan (netplan) and the rendered policy (bootstrap.policy) use them too.
"""

SSH_PORT = 22
HTTP_PORT = 8000
# The API beyond the node (network.api_cidrs): TLS and basic auth, on its own listener so the
# loopback listener on HTTP_PORT stays plain for the node's own health checks and kcli.
API_TLS_PORT = 8443
# Traffic Shaping Automation: the tsa-daemon's HTTP listener on every node (KumoMTA's default,
# assets/tsa_init.lua). Peers publish to it from inside the deployment's network only.
TSA_PORT = 8008

MANAGEMENT_PORTS: dict[int, str] = {
    SSH_PORT: "SSH",
    HTTP_PORT: "the KumoMTA HTTP API (its trusted loopback listener)",
    API_TLS_PORT: "the KumoMTA HTTP API (TLS)",
    TSA_PORT: "the TSA daemon (traffic shaping automation)",
}
