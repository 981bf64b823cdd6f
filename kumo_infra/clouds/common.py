"""Deprecated: the base component moved to :mod:`kumo_infra.component` (issue 9).

Kept so programs written against ``kumo_infra.clouds.common`` (``KumoMtaArgs``,
``KumoMtaComponent``, ``prepare`` ...) keep working; import from ``kumo_infra.component`` instead.
This module will be removed in a later release.
"""

from ..component import *  # noqa: F401,F403
from ..component import (API_ACCESS_NOTE, API_PASSWORD_LENGTH, API_RENEWAL_NOTE, API_TLS_ALGORITHM,  # noqa: F401
                         API_TLS_CURVE, API_TLS_EARLY_RENEWAL_HOURS, API_TLS_NOTE, API_TLS_USES,
                         API_TLS_VALIDITY_HOURS, ApiTls, ComponentPlan, KumoMtaArgs, KumoMtaComponent, NodePlan,
                         NodeSecret, api_access, api_password_spec, api_tls_for, base_tags, child, deliverability_records,
                         dkim_txt_value, dns_records_to_publish, generated_password, machine_options, node_output,
                         pem_body, prepare, public_key_pin, read_password_command, render_user_data, secret_specs,
                         secrets_for, subnet_cidr)
