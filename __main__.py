"""Entry point of `pulumi up`: everything lives in kumo_infra.program."""

from kumo_infra.program import run

run()
