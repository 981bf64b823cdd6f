"""Offline answers for the ssh target (kumo_infra.offline reads them as TARGET.offline_computed and
offline_invokes): what pulumi-command reports once a command ran. Nothing is looked up."""

COMPUTED = {
    # The install command's output: kumo-bootstrap's last line on success.
    "command:remote:Command": {"stdout": "KUMO-BOOTSTRAP OK (offline placeholder: nothing ran)", "stderr": ""},
}

INVOKES: dict = {}
