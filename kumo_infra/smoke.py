"""Smoke checks of a deployed stack, run from the CI runner without SSH.

For every node of the stack output ``nodes``, three checks an operator cares about:

* ``smtp``: port 25 greets with ``220`` naming the node's hostname, EHLO offers STARTTLS and the
  TLS handshake completes (a self-signed certificate is accepted and reported as such: KumoMTA
  makes one when the listener has none, crates/kumo-server-common/src/tls_helpers.rs). Only
  EHLO, STARTTLS and QUIT are sent: never mail.
* ``bootstrap``: the last ``KUMO-BOOTSTRAP OK`` or ``KUMO-BOOTSTRAP FAILED step=...`` line the
  node's bootstrap wrote to its console (kumo-bootstrap.sh result_line), with the
  ``KUMO-BOOTSTRAP WARNING:`` lines of that run, read through a :class:`ConsoleReader`.
* ``outbound25``: the outbound port 25 probe's verdict carried by that OK line
  (``deliverability=ok`` or ``deliverability=FAILED (...)``, kumo-bootstrap.sh step_probe25),
  judged against the deployment's outbound mode: a failed probe fails the check with direct
  delivery and is what a relay deployment expects.

Machines boot slowly, so each check is retried until one deadline shared by every node (the
nodes are checked concurrently). Once a node's console shows its bootstrap result, port 25 gets
``settle_s`` more and then what it answers is final: a failed bootstrap fails fast.

The cloud consoles are read by the cloud CLIs the CI runner is logged in to (OIDC), each one
through :func:`run_cli`; the readers live in each target's package
(``Target.console``: kumo_infra/targets/<t>/console.py).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import smtplib
import socket
import ssl
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Protocol, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from .errors import shown
from .stackconfig import without_stack_secrets

if TYPE_CHECKING:
    from .config import Deployment

SMTP = "smtp"
BOOTSTRAP = "bootstrap"
OUTBOUND25 = "outbound25"
# A node whose checks broke before they could say which one failed.
CHECKS = "checks"

# What the smoke says in EHLO: a name under .invalid (RFC 2606) says it is no mail system.
EHLO_NAME = "kumo-infra-smoke.invalid"
# One SMTP conversation's socket timeout, and the longest a cloud CLI call may take.
SMTP_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 60.0
# After a node's console shows its bootstrap result, port 25 is retried this long, no longer:
# the bootstrap's health step saw the banner from inside before it wrote OK.
SETTLE_S = 60.0


class ConsoleReader(Protocol):
    def read(self, node: dict) -> str:
        """The node's console text so far; node = one entry of the stack output ``nodes``.

        Raises ConsoleError when the console cannot be read (final: asking again cannot help)."""
        ...


class ConsoleError(Exception):
    """A console could not be read. ``final``: retrying cannot help (no CLI, a refused id)."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


# -- the cloud CLIs ----------------------------------------------------------------------------

# (argv, timeout in seconds) -> standard output; ConsoleError otherwise. Injectable for tests.
CliRunner = Callable[[Sequence[str], float], str]

# What kumo-infra ci holds for Pulumi and the stack: the stack's secret config
# (ephemeral.secret_env_var), the state backend's token and the secrets passphrase. A cloud CLI
# reading a console needs none of them, and a CLI, its plug-ins and its debug logs are code and
# output this process does not control.
PULUMI_SECRET_VARIABLES = frozenset({"PULUMI_ACCESS_TOKEN", "PULUMI_CONFIG_PASSPHRASE",
                                     "PULUMI_CONFIG_PASSPHRASE_FILE"})


def cli_environment(environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """``environ`` (default: this process's) without the variables a cloud CLI must not see."""
    source = os.environ if environ is None else environ
    return {name: value for name, value in without_stack_secrets(source).items()
            if name not in PULUMI_SECRET_VARIABLES}


def run_cli(argv: Sequence[str], timeout: float = CLI_TIMEOUT_S) -> str:
    """Run a cloud CLI as given (an argument vector, no shell, no standard input, no secret of the
    stack in its environment: :func:`cli_environment`) and return its standard output; ConsoleError
    naming the tool and carrying its standard error otherwise."""
    tool = argv[0]
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=timeout, stdin=subprocess.DEVNULL, env=cli_environment(), check=False)
    except FileNotFoundError:
        raise ConsoleError(f"{tool}: command not found on this runner's PATH; install that cloud's CLI and log it "
                           "in (kumo-infra reads each node's console through it)", final=True) from None
    except OSError as error:  # found but not runnable (permissions, a broken file)
        raise ConsoleError(f"{tool}: cannot be run: {error}", final=True) from None
    except subprocess.TimeoutExpired:
        raise ConsoleError(f"{' '.join(argv[:4])} did not answer within {timeout:g} s") from None
    if done.returncode != 0:
        raise ConsoleError(f"{' '.join(argv[:4])} exited {done.returncode}: "
                           f"{shown(done.stderr.strip() or '(no error output)', 400)}")
    return done.stdout


def checked_id(value: Any, pattern: re.Pattern[str], what: str, example: str) -> re.Match[str]:
    """The match of a node's machine id (from the stack outputs) against ``pattern``; ConsoleError
    (final) naming the value otherwise: a CLI never receives an id that could read as an option."""
    match = pattern.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ConsoleError(f"machine_id {shown(value)} is not {what} (like {example}): refused", final=True)
    return match


class CliConsole:
    """A ConsoleReader calling a cloud CLI: ``argv`` per node (ids checked), ``parse`` of its output."""

    def __init__(self, run: CliRunner = run_cli, timeout_s: float = CLI_TIMEOUT_S) -> None:
        self.run, self.timeout_s = run, timeout_s

    def argv(self, node: dict) -> list[str]:
        raise NotImplementedError

    def parse(self, out: str) -> str:
        return out

    def read(self, node: dict) -> str:
        return self.parse(self.run(self.argv(node), self.timeout_s))


# -- the report --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    node: str
    name: str
    ok: bool
    detail: str
    # True when the check could not run here (no console on the target): not a failure.
    skipped: bool = False

    def line(self) -> str:
        status = "skip" if self.skipped else "ok  " if self.ok else "FAIL"
        return f"{status} {self.node} {self.name}: {self.detail}"


@dataclass(frozen=True)
class SmokeReport:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        # No check at all proves nothing: an empty report is not a pass.
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)

    def format(self) -> str:
        """One line per check; a failure reads ``FAIL node1 smtp: ...``."""
        return "\n".join(c.line() for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


# -- SMTP --------------------------------------------------------------------------------------

def _tls_client_context() -> ssl.SSLContext:
    # The certificate is reported, not trusted: KumoMTA's own is self-signed unless configured.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def describe_certificate(der: Optional[bytes], hostname: str) -> str:
    """Subject, issuer, whether it signed itself and whether it names ``hostname``; what could not be
    read when the certificate does not parse (the TLS layer accepted it unverified, so it still may)."""
    if not der:
        return "no certificate"
    try:
        return _certificate_facts(x509.load_der_x509_certificate(der), hostname)
    except Exception as error:  # the peer's bytes: cryptography parses lazily and raises ValueError,
        # DuplicateExtension, UnsupportedGeneralNameType... at whichever field is malformed.
        return f"certificate not readable: {_error_named(error)}"


def _error_named(error: BaseException) -> str:
    return f"{type(error).__name__}: {shown(error, 200)}"


def _certificate_facts(cert: x509.Certificate, hostname: str) -> str:
    try:
        cert.verify_directly_issued_by(cert)
        self_signed = True
    except (ValueError, TypeError, InvalidSignature):
        self_signed = False
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    named = hostname.lower() in (n.lower() for n in names)
    return (f"certificate subject {shown(cert.subject.rfc4514_string(), 120)}, issuer "
            f"{shown(cert.issuer.rfc4514_string(), 120)}, self-signed: {'yes' if self_signed else 'no'}, "
            f"names {hostname}: {'yes' if named else 'no'}")


def _reply_text(message: bytes) -> str:
    return message.decode("utf-8", errors="replace")


def _timed_out(error: BaseException) -> bool:
    # smtplib turns a read timeout into SMTPServerDisconnected, the timeout kept as its context.
    return isinstance(error, TimeoutError) or isinstance(error.__context__, TimeoutError)


class _GreetingKept(smtplib.SMTP):
    def connect(self, host: str = "localhost", port: int = 0, source_address: Any = None) -> tuple[int, bytes]:
        # starttls() gives this name to the TLS layer; SMTP.__init__ sets it only when it connects itself,
        # and then hides the greeting.
        self._host = host
        return super().connect(host, port, source_address)


def probe_smtp(address: str, port: int, hostname: str, timeout: float) -> tuple[bool, str]:
    """One SMTP conversation: greeting, EHLO, STARTTLS, EHLO over TLS, QUIT. (passed, what was seen)."""
    where = f"{address}:{port}"
    client = _GreetingKept(local_hostname=EHLO_NAME, timeout=timeout)
    stage = "greeting"
    try:
        code, message = client.connect(address, port)
        first = _reply_text(message).split("\n", 1)[0]
        if code != 220:
            return False, f"{where} greeted {code} {shown(first, 160)}, not 220"
        if first.split(" ", 1)[0].lower() != hostname.lower():
            return False, f"{where} greeted 220 {shown(first, 160)}: it does not name {hostname}"
        stage = "EHLO"
        code, message = client.ehlo()
        if code != 250:
            return False, f"{where} answered EHLO with {code} {shown(_reply_text(message), 160)}"
        if not client.has_extn("starttls"):
            offered = ", ".join(sorted(client.esmtp_features)) or "nothing"
            return False, f"{where} EHLO does not offer STARTTLS (offers: {offered})"
        stage = "STARTTLS"
        try:
            client.starttls(context=_tls_client_context())
        except smtplib.SMTPResponseException as error:
            said = shown(_reply_text(error.smtp_error), 160)
            return False, f"{where} answered STARTTLS with {error.smtp_code} {said}"
        except (ssl.SSLError, smtplib.SMTPServerDisconnected, OSError) as error:
            return False, f"{where} STARTTLS handshake failed: {shown(error, 200)}"
        tls = client.sock
        assert isinstance(tls, ssl.SSLSocket)  # smtplib wrapped it once the server said 220
        cipher, version = tls.cipher(), tls.version()
        certificate = describe_certificate(tls.getpeercert(binary_form=True), hostname)
        stage = "EHLO over TLS"
        code, message = client.ehlo()
        if code != 250:
            return False, f"{where} answered EHLO over TLS with {code} {shown(_reply_text(message), 160)}"
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            pass  # everything that matters was seen
        return True, (f"{where} greeted 220 {shown(first, 160)}; EHLO offers STARTTLS; TLS {version} "
                      f"{cipher[0] if cipher else ''}; {certificate}")
    except (smtplib.SMTPException, OSError) as error:
        if _timed_out(error):
            return False, f"{where}: no {stage} within {timeout:.0f} s"
        if isinstance(error, smtplib.SMTPServerDisconnected):
            return False, f"{where} closed the connection before its {stage} reply"
        return False, f"{where} at the {stage}: {shown(error, 200)}"
    finally:
        client.close()


# -- the console -------------------------------------------------------------------------------

_RESULT = re.compile(r"KUMO-BOOTSTRAP (OK|FAILED)\b[^\r\n]*")
_WARNING = re.compile(r"KUMO-BOOTSTRAP WARNING: ([^\r\n]*)")
_FIELD = {"host": re.compile(r"\bhost=([^\s:]+)"), "step": re.compile(r"\bstep=(\S+)")}
# Console text is the machine's: control characters (terminal escapes) are shown, never passed on.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_FAILED_DETAIL = re.compile(r"\bstep=\S+ host=\S*: (.*)")
_DELIVERABILITY = re.compile(r" deliverability=(ok|FAILED \((.*)\))\s*$")


@dataclass(frozen=True)
class BootstrapResult:
    """The last result line of a console, as kumo-bootstrap.sh writes it."""

    ok: bool
    line: str
    host: Optional[str]
    step: Optional[str]  # FAILED: the step that failed
    detail: str  # FAILED: what went wrong
    warnings: tuple[str, ...]  # the WARNING lines of the run that wrote the line
    # The probe's verdict on the last OK line carrying one: "ok", "FAILED", or None (none seen).
    deliverability: Optional[str]
    deliverability_detail: str


def parse_console(text: str) -> Optional[BootstrapResult]:
    """The bootstrap result in a console's text, or None while there is none."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    results = list(_RESULT.finditer(text))
    if not results:
        return None
    last = results[-1]
    line = last.group(0).rstrip()
    # The run's warnings come just before its result line; a console may show every line twice
    # (the bootstrap writes to /dev/console and cloud-init copies its output there too), so they are
    # taken from after the previous different result line, once each.
    start = next((r.end() for r in reversed(results) if r.group(0).rstrip() != line), 0)
    warnings = tuple(dict.fromkeys(w.group(1).rstrip() for w in _WARNING.finditer(text, start)))
    fields = {key: (m.group(1) if (m := pattern.search(line)) else None) for key, pattern in _FIELD.items()}
    failed = _FAILED_DETAIL.search(line)
    # A later run (the spool step at a reboot) writes an OK line without the probe: the last one with it.
    verdict = next((m for r in reversed(results) if (m := _DELIVERABILITY.search(r.group(0).rstrip()))), None)
    return BootstrapResult(
        ok=last.group(1) == "OK", line=line, host=fields["host"], step=fields["step"],
        detail=failed.group(1) if failed else "", warnings=warnings,
        deliverability=None if verdict is None else verdict.group(1).split(" ", 1)[0],
        deliverability_detail="" if verdict is None else verdict.group(2) or "")


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return shown(lines[-1].strip(), 160) if lines else "(empty)"  # shown: escapes control characters


# -- one node ----------------------------------------------------------------------------------

@dataclass
class _Settings:
    deployment: "Deployment"
    console: Optional[ConsoleReader]
    smtp_port: int
    address: Callable[[dict], str]
    deadline: float  # on clock()
    deadline_s: float
    poll_s: float
    settle_s: float
    clock: Callable[[], float]
    sleep: Callable[[float], None]


def _node_label(node: Any, index: int) -> str:
    if isinstance(node, dict) and (label := node.get("name") or node.get("hostname")):
        return str(label)
    return f"nodes[{index}]"


def _checked_node(index: int, node: Any, s: _Settings) -> list[Check]:
    """The node's checks; whatever breaks in them is this node's failed check, named, and the other
    nodes' report still comes."""
    try:
        return _check_node(index, node, s)
    except Exception as error:
        return [Check(_node_label(node, index), CHECKS, False, f"the checks stopped: {_error_named(error)}")]


def _check_node(index: int, node: dict, s: _Settings) -> list[Check]:
    name = _node_label(node, index)
    hostname = node.get("hostname")
    address = ""
    smtp: Optional[tuple[bool, str]] = None  # (passed, detail) of the last attempt
    if not isinstance(hostname, str) or not hostname:
        smtp = (False, "the node output has no hostname to expect in the greeting")
    else:
        try:
            address = s.address(node)
        except (KeyError, TypeError, ValueError) as error:
            smtp = (False, f"no address to reach it at: {shown(error)}")
        else:
            if not address:
                smtp = (False, "no address to reach it at (public_ip is empty)")
    smtp_possible = smtp is None

    result: Optional[BootstrapResult] = None
    console_error: Optional[ConsoleError] = None
    console_tail = "(nothing read)"
    result_seen_at: Optional[float] = None
    smtp_gave_up = False
    while True:
        if smtp_possible and (smtp is None or not smtp[0]):
            try:
                smtp = probe_smtp(address, s.smtp_port, hostname,
                                  max(1.0, min(SMTP_TIMEOUT_S, s.deadline - s.clock())))
            except Exception as error:  # an input smtplib cannot take, or a bug: the same again next time
                smtp, smtp_possible = (False, f"{address}:{s.smtp_port}: the SMTP check broke: "
                                              f"{_error_named(error)}"), False
        if s.console is not None and result is None and not (console_error and console_error.final):
            try:
                text = s.console.read(node)
            except ConsoleError as error:
                console_error = error
            except Exception as error:  # a reader is a plug-in: its failure is this node's, named
                console_error = ConsoleError(f"the console reader failed: {type(error).__name__}: {error}",
                                             final=True)
            else:
                console_error = None
                console_tail = _last_line(text)
                result = parse_console(text)
        now = s.clock()
        if result is not None and result_seen_at is None:
            result_seen_at = now
        smtp_final = not smtp_possible or (smtp is not None and smtp[0])
        if not smtp_final and result_seen_at is not None and now - result_seen_at >= s.settle_s:
            smtp_final = smtp_gave_up = True
        console_final = s.console is None or result is not None or bool(console_error and console_error.final)
        if (smtp_final and console_final) or now >= s.deadline:
            break
        s.sleep(max(0.0, min(s.poll_s, s.deadline - now)))

    assert smtp is not None
    passed, detail = smtp
    if not passed and smtp_possible:
        detail += (f" (still so {s.settle_s:g} s after the console showed the bootstrap's result)" if smtp_gave_up
                   else f" (the last attempt before the {s.deadline_s:g} s deadline)")
    return [Check(name, SMTP, passed, detail), *_console_checks(name, hostname, result, console_error, console_tail, s)]


def _console_checks(name: str, hostname: Any, result: Optional[BootstrapResult],
                    error: Optional[ConsoleError], tail: str, s: _Settings) -> list[Check]:
    if s.console is None:
        target = s.deployment.target
        why = (f"the {target.name} target has no console kumo-infra can read (the installer's result is in "
               "pulumi up's output)" if target.console is None else "no console reader was given")
        return [Check(name, BOOTSTRAP, True, f"not checked: {why}", skipped=True),
                Check(name, OUTBOUND25, True, "not checked: the probe's result is read from the console",
                      skipped=True)]
    if result is None:
        why = (f"the console could not be read: {error}" if error is not None else
               f"no KUMO-BOOTSTRAP result on the console within {s.deadline_s:g} s (last line: {tail})")
        return [Check(name, BOOTSTRAP, False, why),
                Check(name, OUTBOUND25, True, "not checked: no bootstrap result to read it from", skipped=True)]

    warned = f"; {len(result.warnings)} warning(s): " + " | ".join(result.warnings) if result.warnings else ""
    wrong_host = result.host is not None and isinstance(hostname, str) and result.host.lower() != hostname.lower()
    if not result.ok:
        bootstrap = Check(name, BOOTSTRAP, False, f"FAILED step={result.step}: {result.detail}{warned}")
    elif wrong_host:
        bootstrap = Check(name, BOOTSTRAP, False, f"the console's result names host={result.host}, the stack "
                                                  f"says {hostname}: {shown(result.line, 200)}")
    else:
        bootstrap = Check(name, BOOTSTRAP, True, f"{shown(result.line, 200)}{warned}")
    return [bootstrap, _outbound25(name, result, s.deployment.outbound_mode)]


def _outbound25(name: str, result: BootstrapResult, mode: str) -> Check:
    if not result.ok and result.deliverability is None:
        return Check(name, OUTBOUND25, True, f"not checked: the bootstrap failed at step={result.step}, before "
                                             "the probe", skipped=True)
    if result.deliverability is None:
        return Check(name, OUTBOUND25, False, "no outbound port 25 probe result (deliverability=...) on the console")
    if result.deliverability == "ok":
        return Check(name, OUTBOUND25, True, f"deliverability=ok (outbound mode {mode})")
    verdict = f"deliverability=FAILED ({result.deliverability_detail})"
    if mode == "direct":
        return Check(name, OUTBOUND25, False, f"{verdict} with outbound mode direct: mail queues until the cloud "
                                              "lifts the block (kumo-infra port25 says what to request)")
    return Check(name, OUTBOUND25, True, f"{verdict}, as expected with outbound mode {mode}: mail leaves through "
                                         "the smarthost")


def run_smoke(deployment: "Deployment", nodes: list[dict], *, console: Optional[ConsoleReader],
              smtp_port: int = 25, address: Callable[[dict], str] = lambda n: n["public_ip"],
              deadline_s: float = 900.0, poll_s: float = 10.0, settle_s: float = SETTLE_S,
              clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> SmokeReport:
    """Check every node (concurrently, one deadline for all); the report names each failure."""
    if not nodes:
        return SmokeReport((Check("(stack)", "nodes", False, "the stack output nodes is empty: nothing to check"),))
    settings = _Settings(deployment, console, smtp_port, address, clock() + deadline_s, deadline_s, poll_s,
                         settle_s, clock, sleep)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(nodes), 32),
                                               thread_name_prefix="kumo-smoke") as pool:
        per_node = list(pool.map(lambda numbered: _checked_node(*numbered, settings), enumerate(nodes)))
    return SmokeReport(tuple(check for checks in per_node for check in checks))
