"""The smoke checks (kumo_infra.smoke) and the cloud console readers.

SMTP is checked against real servers on 127.0.0.1 in threads (one per behaviour: correct with
STARTTLS, another hostname, no STARTTLS, a failing handshake, silence, 421), and against the
stand-in kumod the VM tests install; consoles through scripted readers; each cloud's reader
through a fake CLI runner that records the argument vector and answers what the real CLI prints.
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kumo_infra import targets
from kumo_infra.config import parse_deployment
from kumo_infra.smoke import (EHLO_NAME, Check, ConsoleError, SmokeReport, describe_certificate, parse_console,
                              probe_smtp, run_cli, run_smoke)
from kumo_infra.targets.aws.console import AwsConsole
from kumo_infra.targets.aws.console import reader as aws_reader
from kumo_infra.targets.azure.console import AzureConsole
from kumo_infra.targets.azure.console import reader as azure_reader
from kumo_infra.targets.gcp.console import GcpConsole
from kumo_infra.targets.gcp.console import reader as gcp_reader

from tests.conftest import ROOT, deployment
from tests.contract_deployments import RELAY

HOST = "mta.example.com"
NODE = {"name": "node0", "hostname": HOST, "public_ip": "127.0.0.1", "machine_id": "i-0123456789abcdef0"}
DIRECT = parse_deployment(deployment(port25={"outbound": "direct"}))
RELAYED = parse_deployment(deployment(port25=RELAY))

# Lines as kumo-bootstrap.sh writes them (result_line, console_warnings, step_probe25's die message).
BLOCKED = ("outbound port 25 is blocked, and delivery is direct: mail will queue until the cloud lifts the block "
           "(kumo-infra port25)")
OK_LINE = f"KUMO-BOOTSTRAP OK host={HOST} changed=true deliverability=ok"
OK_BLOCKED = f"KUMO-BOOTSTRAP OK host={HOST} changed=true deliverability=FAILED ({BLOCKED})"
FAILED_LINE = (f"KUMO-BOOTSTRAP FAILED step=install host={HOST}: repository unreachable: "
               "http://10.0.2.100/kumomta-ubuntu-22/public.gpg")
BOOT_NOISE = "[    0.000000] Linux version 6.1.0-28-cloud-amd64\r\n[  OK  ] Started cloud-final.service\r\n"


def console_text(*lines: str) -> str:
    return BOOT_NOISE + "".join(line + "\r\n" for line in lines)


# -- certificates and SMTP servers ------------------------------------------------------------

def certificate(tmp: Path, common_name: str, hostname: str, issuer: Optional[tuple] = None,
                san_critical: bool = False) -> tuple[Path, Path, tuple]:
    """A P-256 certificate naming ``hostname``: self-signed, or signed by ``issuer`` (name, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=san_critical)
            .sign(issuer_key, hashes.SHA256()))
    cert_path, key_path = tmp / f"{common_name}.crt", tmp / f"{common_name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, (name, key)


SAN_CRITICAL_DER = bytes.fromhex("0603551d11" "0101ff")  # extnID subjectAltName, critical BOOLEAN TRUE (DER)


def ber_boolean_certificate(tmp: Path) -> tuple[Path, Path]:
    """A certificate OpenSSL serves and cryptography refuses to parse: its SAN's critical flag is the
    BER TRUE 0x01 where DER demands 0xFF (a lenient encoder's output)."""
    cert, key, _ = certificate(tmp, "ber encoded", HOST, san_critical=True)
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    assert der.count(SAN_CRITICAL_DER) == 1
    cert.write_text(ssl.DER_cert_to_PEM_cert(der.replace(SAN_CRITICAL_DER, SAN_CRITICAL_DER[:-1] + b"\x01")))
    return cert, key


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


class SmtpServer:
    """An SMTP server on 127.0.0.1 whose behaviour a test chooses; it records every command.

    greeting None: silence (the connection stays open, nothing is sent). starttls: "tls" (a real
    handshake), "garbage" (220, then bytes that are no TLS), or a reply such as "454 4.7.0 no".
    ``broken_first`` connections are closed at once, as a port whose daemon is not up yet.
    """

    def __init__(self, *, tls: Optional[ssl.SSLContext], greeting: Optional[str] = f"220 {HOST} ESMTP test",
                 extensions: Sequence[str] = ("PIPELINING", "8BITMIME", "STARTTLS"), starttls: str = "tls",
                 broken_first: int = 0) -> None:
        self.tls, self.greeting, self.extensions, self.starttls = tls, greeting, extensions, starttls
        self.broken_first = broken_first
        self.commands: list[str] = []
        self.connections = 0
        self.errors: list[BaseException] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._session, args=(conn, self.connections), daemon=True).start()

    def _session(self, conn: socket.socket, number: int) -> None:
        conn.settimeout(30)
        try:
            if number <= self.broken_first:
                return
            if self.greeting is None:
                while not self.stopping.is_set() and conn.recv(1024):
                    pass
                return
            conn.sendall(self.greeting.encode() + b"\r\n")
            reader = conn.makefile("rb")
            while line := reader.readline():
                command = line.decode().rstrip("\r\n")
                self.commands.append(command)
                verb = command.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    lines = [f"{HOST} Aloha", *self.extensions]
                    conn.sendall("".join(f"250{'-' if i < len(lines) - 1 else ' '}{text}\r\n"
                                         for i, text in enumerate(lines)).encode())
                elif verb == "STARTTLS" and self.starttls == "tls":
                    conn.sendall(b"220 Ready to Start TLS\r\n")
                    conn = self.tls.wrap_socket(conn, server_side=True)
                    reader = conn.makefile("rb")
                elif verb == "STARTTLS" and self.starttls == "garbage":
                    conn.sendall(b"220 Ready to Start TLS\r\n")
                    conn.sendall(b"this is not a TLS server hello\r\n" * 4)
                    return
                elif verb == "STARTTLS":
                    conn.sendall(self.starttls.encode() + b"\r\n")
                elif verb == "QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"502 no\r\n")
        except (ssl.SSLError, ConnectionError):
            pass  # the client hung up, or refused the handshake: part of what is tested
        except BaseException as error:  # a failure here must fail the test, not vanish in a thread
            self.errors.append(error)
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()


@pytest.fixture
def tls(tmp_path: Path) -> ssl.SSLContext:
    cert, key, _ = certificate(tmp_path, "rcgen self signed cert", HOST)
    return server_tls(cert, key)


@pytest.fixture
def smtp_server():
    started: list[SmtpServer] = []

    def start(**behaviour) -> SmtpServer:
        started.append(SmtpServer(**behaviour))
        return started[-1]

    yield start
    for server in started:
        server.stop()
        assert not server.errors, server.errors


class Scripted:
    """A ConsoleReader answering each read with the next text (or raising the next error); the last
    answer repeats."""

    def __init__(self, *answers) -> None:
        self.answers, self.reads = list(answers), 0

    def read(self, node: dict) -> str:
        answer = self.answers[min(self.reads, len(self.answers) - 1)]
        self.reads += 1
        if isinstance(answer, BaseException):
            raise answer
        return answer


def smoke(server: SmtpServer, console, deployment=DIRECT, nodes=(NODE,), **kwargs) -> SmokeReport:
    options = {"deadline_s": 10.0, "poll_s": 0.01, **kwargs}
    return run_smoke(deployment, list(nodes), console=console, smtp_port=server.port, **options)


def by_name(report: SmokeReport, node: str = "node0") -> dict[str, Check]:
    return {c.name: c for c in report.checks if c.node == node}


# -- SMTP --------------------------------------------------------------------------------------

def test_a_node_greeting_with_its_hostname_and_completing_starttls_passes_and_is_sent_no_mail(smtp_server, tls):
    server = smtp_server(tls=tls)
    report = smoke(server, Scripted(console_text(OK_LINE)))
    assert report.ok, report.format()
    smtp = by_name(report)["smtp"]
    assert f"greeted 220 '{HOST} ESMTP test'" in smtp.detail and "EHLO offers STARTTLS" in smtp.detail
    assert "TLSv1.3" in smtp.detail
    assert ("certificate subject 'CN=rcgen self signed cert', issuer 'CN=rcgen self signed cert', "
            f"self-signed: yes, names {HOST}: yes") in smtp.detail
    # EHLO, STARTTLS, EHLO again over TLS (RFC 3207), QUIT: nothing that could send mail.
    assert [c.upper() for c in server.commands] == [f"EHLO {EHLO_NAME}".upper(), "STARTTLS",
                                                    f"EHLO {EHLO_NAME}".upper(), "QUIT"]


def test_a_certificate_signed_by_another_is_reported_as_not_self_signed(smtp_server, tmp_path):
    _, _, ca = certificate(tmp_path, "Test CA", "ca.example.com")
    cert, key, _ = certificate(tmp_path, HOST, "other.example.com", issuer=ca)
    ok, detail = probe_smtp("127.0.0.1", smtp_server(tls=server_tls(cert, key)).port, HOST, timeout=10)
    assert ok, detail
    assert f"subject 'CN={HOST}', issuer 'CN=Test CA', self-signed: no, names {HOST}: no" in detail


def test_a_certificate_that_does_not_parse_is_reported_in_the_smtp_check_not_raised(smtp_server, tmp_path):
    server = smtp_server(tls=server_tls(*ber_boolean_certificate(tmp_path)))
    report = smoke(server, Scripted(console_text(OK_LINE)))
    # The handshake completed (the certificate is reported, never trusted): SMTP with STARTTLS works.
    assert report.ok, report.format()
    smtp = by_name(report)["smtp"].detail
    assert "EHLO offers STARTTLS; TLS TLSv1.3" in smtp
    assert smtp.endswith("certificate not readable: ValueError: 'error parsing asn1 value: ParseError { kind: "
                         "InvalidValue, location: [\"Certificate::tbs_cert\", \"TbsCertificate::raw_extensions\", "
                         "0, \"Extension::critical\"] }'")
    assert [c.upper() for c in server.commands][-1] == "QUIT"


def test_bytes_that_are_no_certificate_are_described_as_such():
    assert describe_certificate(b"\x30\x03abc", HOST).startswith("certificate not readable: ValueError: ")
    assert describe_certificate(b"", HOST) == "no certificate"


def test_a_node_whose_checks_break_fails_by_name_and_the_other_nodes_are_reported(smtp_server, tls):
    server = smtp_server(tls=tls)
    report = smoke(server, Scripted(console_text(OK_LINE)), nodes=(NODE, "node1.example.com"))
    assert [c.line() for c in report.checks[:3]] == [c.line() for c in by_name(report).values()]
    assert all(c.ok for c in report.checks[:3]), report.format()
    assert [c.line() for c in report.checks[3:]] == [
        "FAIL nodes[1] checks: the checks stopped: AttributeError: \"'str' object has no attribute 'get'\""]
    assert not report.ok


def test_an_address_smtplib_cannot_take_fails_that_nodes_smtp_at_once_and_the_console_is_still_read(
        smtp_server, tls):
    server = smtp_server(tls=tls)
    node = {**NODE, "public_ip": "a" * 64 + ".example.com"}  # a DNS label longer than 63: idna refuses it
    console = Scripted(console_text(OK_LINE))
    report = smoke(server, console, nodes=(node,))
    smtp = by_name(report)["smtp"]
    assert not smtp.ok and smtp.detail.startswith(f"{node['public_ip']}:{server.port}: the SMTP check broke: "
                                                  "UnicodeError: ")
    assert by_name(report)["bootstrap"].ok and console.reads == 1
    assert server.connections == 0


def test_a_greeting_naming_another_host_fails_naming_the_node_and_the_check(smtp_server, tls):
    server = smtp_server(tls=tls, greeting="220 other.example.com ESMTP Postfix")
    report = smoke(server, Scripted(console_text(OK_LINE)), deadline_s=0.5)
    assert not report.ok
    (failure,) = report.failures
    assert failure.line().startswith(f"FAIL node0 smtp: 127.0.0.1:{server.port} greeted 220 "
                                     f"'other.example.com ESMTP Postfix': it does not name {HOST}")
    assert failure.detail.endswith("(the last attempt before the 0.5 s deadline)")


def test_an_ehlo_without_starttls_fails(smtp_server, tls):
    server = smtp_server(tls=tls, extensions=("PIPELINING", "8BITMIME"))
    check = by_name(smoke(server, Scripted(console_text(OK_LINE)), deadline_s=0.3))["smtp"]
    assert not check.ok and "EHLO does not offer STARTTLS (offers: 8bitmime, pipelining)" in check.detail
    assert "STARTTLS" not in server.commands


def test_a_failing_tls_handshake_fails(smtp_server, tls):
    server = smtp_server(tls=tls, starttls="garbage")
    check = by_name(smoke(server, Scripted(console_text(OK_LINE)), deadline_s=0.3))["smtp"]
    assert not check.ok and "STARTTLS handshake failed" in check.detail, check.detail


def test_a_starttls_refused_fails_with_the_reply(smtp_server, tls):
    server = smtp_server(tls=tls, starttls="454 4.7.0 TLS not available")
    check = by_name(smoke(server, Scripted(console_text(OK_LINE)), deadline_s=0.3))["smtp"]
    assert not check.ok and "answered STARTTLS with 454 '4.7.0 TLS not available'" in check.detail


def test_a_node_silent_until_the_deadline_fails(smtp_server, tls):
    server = smtp_server(tls=tls, greeting=None)
    check = by_name(smoke(server, Scripted(console_text(OK_LINE)), deadline_s=1.5))["smtp"]
    assert not check.ok and f"127.0.0.1:{server.port}: no greeting within" in check.detail, check.detail


def test_a_421_greeting_fails_with_the_reply(smtp_server, tls):
    server = smtp_server(tls=tls, greeting=f"421 4.3.0 {HOST} not ready: cannot write to /var/spool/kumomta")
    check = by_name(smoke(server, Scripted(console_text(OK_LINE)), deadline_s=0.3))["smtp"]
    assert not check.ok
    assert f"greeted 421 '4.3.0 {HOST} not ready: cannot write to /var/spool/kumomta', not 220" in check.detail


def test_smtp_is_retried_until_the_daemon_answers(smtp_server, tls):
    # A booting node: port 25 accepts and closes until kumod is up.
    server = smtp_server(tls=tls, broken_first=3)
    report = smoke(server, Scripted(console_text(OK_LINE)))
    assert report.ok, report.format()
    assert server.connections == 4


def test_a_failing_port_25_is_final_soon_after_the_console_shows_the_result(smtp_server, tls):
    # Simulated time: only sleeps advance it. The bootstrap reported FAILED at once; port 25 gets
    # settle_s more, not the whole 900 s deadline.
    now = [0.0]
    server = smtp_server(tls=tls, greeting="220 other.example.com ESMTP")
    report = smoke(server, Scripted(console_text(FAILED_LINE)), deadline_s=900, poll_s=10, settle_s=30,
                   clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    smtp = by_name(report)["smtp"]
    assert not smtp.ok and "still so 30 s after the console showed the bootstrap's result" in smtp.detail
    assert server.connections == 4 and now[0] == 30


def test_every_node_is_checked_at_once_under_one_deadline(smtp_server, tls):
    # Each read waits until all three nodes are reading: checked one after another, the barrier breaks.
    barrier = threading.Barrier(3, timeout=20)

    class Together:
        def read(self, node: dict) -> str:
            barrier.wait()
            return console_text(OK_LINE)

    nodes = [{**NODE, "name": f"node{i}"} for i in range(3)]
    report = smoke(smtp_server(tls=tls), Together(), nodes=nodes)
    assert report.ok, report.format()
    assert [c.node for c in report.checks] == ["node0"] * 3 + ["node1"] * 3 + ["node2"] * 3


def test_a_node_without_hostname_or_address_fails_naming_it(smtp_server, tls):
    server = smtp_server(tls=tls)
    nodes = [{"name": "node0", "public_ip": "127.0.0.1"}, {"name": "node1", "hostname": HOST}]
    report = run_smoke(DIRECT, nodes, console=Scripted(console_text(OK_LINE)), smtp_port=server.port,
                       deadline_s=0.3, poll_s=0.01)
    assert by_name(report, "node0")["smtp"].detail == "the node output has no hostname to expect in the greeting"
    assert by_name(report, "node1")["smtp"].detail == "no address to reach it at: \"'public_ip'\""
    assert server.connections == 0


def test_no_nodes_is_a_failure_not_an_empty_pass():
    report = run_smoke(DIRECT, [], console=None)
    assert not report.ok and report.format() == "FAIL (stack) nodes: the stack output nodes is empty: nothing to check"


# -- the console -------------------------------------------------------------------------------

def test_the_bootstrap_ok_line_passes_and_is_reported(smtp_server, tls):
    checks = by_name(smoke(smtp_server(tls=tls), Scripted(console_text(OK_LINE))))
    assert checks["bootstrap"].ok and checks["bootstrap"].detail == repr(OK_LINE)
    assert checks["outbound25"].ok and checks["outbound25"].detail == "deliverability=ok (outbound mode direct)"


def test_the_console_is_polled_until_the_result_appears(smtp_server, tls):
    console = Scripted(ConsoleError("aws ec2 get-console-output exited 254: throttled"), BOOT_NOISE,
                       console_text("KUMO-BOOTSTRAP WARNING: not yet"), console_text(OK_LINE))
    report = smoke(smtp_server(tls=tls), console)
    assert report.ok, report.format()
    assert console.reads == 4


def test_a_failed_bootstrap_names_the_step_and_its_detail(smtp_server, tls):
    report = smoke(smtp_server(tls=tls), Scripted(console_text(FAILED_LINE)), settle_s=0)
    checks = by_name(report)
    assert not report.ok and [c.name for c in report.failures] == ["bootstrap"]
    assert checks["bootstrap"].line() == ("FAIL node0 bootstrap: FAILED step=install: repository unreachable: "
                                          "http://10.0.2.100/kumomta-ubuntu-22/public.gpg")
    assert checks["outbound25"].skipped and "the bootstrap failed at step=install" in checks["outbound25"].detail


def test_the_warnings_of_the_last_run_are_reported_once_each(smtp_server, tls):
    first = f"KUMO-BOOTSTRAP OK host={HOST} changed=true deliverability=ok"
    text = console_text("KUMO-BOOTSTRAP WARNING: from an earlier run", first,
                        "KUMO-BOOTSTRAP WARNING: spool disk smaller than planned",
                        "KUMO-BOOTSTRAP WARNING: spool disk smaller than planned",  # the console copy
                        "KUMO-BOOTSTRAP WARNING: no PTR yet",
                        f"KUMO-BOOTSTRAP OK host={HOST} changed=false deliverability=ok",
                        "KUMO-BOOTSTRAP WARNING: no PTR yet",
                        f"KUMO-BOOTSTRAP OK host={HOST} changed=false deliverability=ok")
    check = by_name(smoke(smtp_server(tls=tls), Scripted(text)))["bootstrap"]
    assert check.ok
    assert check.detail.endswith("; 2 warning(s): spool disk smaller than planned | no PTR yet"), check.detail


def test_no_result_until_the_deadline_fails_with_the_last_console_line(smtp_server, tls):
    check = by_name(smoke(smtp_server(tls=tls), Scripted(BOOT_NOISE), deadline_s=0.3))["bootstrap"]
    assert not check.ok
    assert check.detail == ("no KUMO-BOOTSTRAP result on the console within 0.3 s (last line: "
                            "'[  OK  ] Started cloud-final.service')")


def test_a_console_that_cannot_be_read_fails_with_the_last_error(smtp_server, tls):
    console = Scripted(ConsoleError("az vm boot-diagnostics get-boot-log exited 1: 'Please enable boot diagnostics.'"))
    check = by_name(smoke(smtp_server(tls=tls), console, deadline_s=0.3))["bootstrap"]
    assert check.line() == ("FAIL node0 bootstrap: the console could not be read: az vm boot-diagnostics "
                            "get-boot-log exited 1: 'Please enable boot diagnostics.'")
    assert console.reads > 1


def test_a_final_console_error_is_not_retried(smtp_server, tls):
    console = Scripted(ConsoleError("aws: command not found on this runner's PATH", final=True))
    check = by_name(smoke(smtp_server(tls=tls), console))["bootstrap"]
    assert not check.ok and "aws: command not found" in check.detail and console.reads == 1


def test_a_reader_that_breaks_is_named_not_raised(smtp_server, tls):
    check = by_name(smoke(smtp_server(tls=tls), Scripted(KeyError("machine_id"))))["bootstrap"]
    assert check.detail == "the console could not be read: the console reader failed: KeyError: 'machine_id'"


def test_a_result_naming_another_host_fails(smtp_server, tls):
    check = by_name(smoke(smtp_server(tls=tls), Scripted(console_text(OK_LINE.replace(HOST, "mta9.example.com")))))
    assert not check["bootstrap"].ok
    assert check["bootstrap"].detail.startswith(
        f"the console's result names host=mta9.example.com, the stack says {HOST}")


def test_a_blocked_probe_fails_with_direct_delivery(smtp_server, tls):
    report = smoke(smtp_server(tls=tls), Scripted(console_text(OK_BLOCKED)), deployment=DIRECT)
    assert [c.line() for c in report.failures] == [
        f"FAIL node0 outbound25: deliverability=FAILED ({BLOCKED}) with outbound mode direct: mail queues until the "
        "cloud lifts the block (kumo-infra port25 says what to request)"]


def test_a_blocked_probe_is_what_a_relay_deployment_expects(smtp_server, tls):
    report = smoke(smtp_server(tls=tls), Scripted(console_text(OK_BLOCKED)), deployment=RELAYED)
    assert report.ok, report.format()
    assert by_name(report)["outbound25"].detail == (f"deliverability=FAILED ({BLOCKED}), as expected with outbound "
                                                    "mode relay: mail leaves through the smarthost")


def test_an_ok_line_without_the_probe_fails_the_outbound_check(smtp_server, tls):
    check = by_name(smoke(smtp_server(tls=tls), Scripted(console_text(f"KUMO-BOOTSTRAP OK host={HOST} changed=true"))))
    assert not check["outbound25"].ok and "no outbound port 25 probe result" in check["outbound25"].detail


def test_a_result_line_is_read_field_by_field_and_its_control_characters_shown():
    failed = parse_console(console_text("KUMO-BOOTSTRAP WARNING: disk \x1b[31mred", FAILED_LINE + "\x07"))
    assert (failed.ok, failed.host, failed.step) == (False, HOST, "install")
    assert failed.detail == "repository unreachable: http://10.0.2.100/kumomta-ubuntu-22/public.gpg\\x07"
    assert failed.warnings == ("disk \\x1b[31mred",)
    ok = parse_console(console_text(OK_BLOCKED))
    assert (ok.ok, ok.host, ok.step, ok.deliverability, ok.deliverability_detail) == (True, HOST, None, "FAILED",
                                                                                        BLOCKED)


def test_a_later_spool_run_keeps_the_first_runs_probe_result():
    # At a reboot the spool step writes an OK line without the probe.
    result = parse_console(console_text(OK_BLOCKED, f"KUMO-BOOTSTRAP OK host={HOST} changed=true"))
    assert result is not None and result.ok and result.line.endswith("changed=true")
    assert (result.deliverability, result.deliverability_detail) == ("FAILED", BLOCKED)


def test_without_a_console_the_checks_say_why_and_do_not_fail(smtp_server, tls):
    ssh = parse_deployment(targets.get("ssh").example)
    report = smoke(smtp_server(tls=tls), None, deployment=ssh)
    assert report.ok
    assert [c.line() for c in report.checks[1:]] == [
        "skip node0 bootstrap: not checked: the ssh target has no console kumo-infra can read (the installer's "
        "result is in pulumi up's output)",
        "skip node0 outbound25: not checked: the probe's result is read from the console"]
    aws = by_name(smoke(smtp_server(tls=tls), None, deployment=DIRECT))
    assert aws["bootstrap"].detail == "not checked: no console reader was given"


def test_the_report_formats_one_line_per_check_and_serialises(smtp_server, tls):
    report = smoke(smtp_server(tls=tls), Scripted(console_text(OK_BLOCKED)))
    lines = report.format().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["ok   node0 smtp", "ok   node0 bootstrap",
                                                          "FAIL node0 outbound25"]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False
    assert [(c["node"], c["name"], c["ok"], c["skipped"]) for c in data["checks"]] == [
        ("node0", "smtp", True, False), ("node0", "bootstrap", True, False), ("node0", "outbound25", False, False)]


# -- the stand-in kumod speaks like kumod ------------------------------------------------------

STANDIN_KUMOD = ROOT / "tests/vm/standin/kumod"


def test_the_standin_kumod_answers_ehlo_and_starttls_as_kumomta_does(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI (Debian package openssl) is not installed")
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    smtp_port, http_port = ports
    policy = tmp_path / "init.lua"
    policy.write_text("kumo.on('init', function()\n"
                      f"  kumo.start_esmtp_listener {{ listen = '127.0.0.1:{smtp_port}', hostname = '{HOST}' }}\n"
                      f"  kumo.start_http_listener {{ listen = '127.0.0.1:{http_port}' }}\n"
                      "end)\n")
    process = subprocess.Popen([sys.executable, str(STANDIN_KUMOD), "--policy", str(policy),
                                "--user", pwd.getpwuid(os.geteuid()).pw_name], stderr=subprocess.PIPE, text=True)
    try:
        report = run_smoke(DIRECT, [NODE], console=Scripted(console_text(OK_LINE)), smtp_port=smtp_port,
                           deadline_s=30, poll_s=0.2)
        assert report.ok, report.format()
        assert ("certificate subject 'CN=rcgen self signed cert', issuer 'CN=rcgen self signed cert', "
                f"self-signed: yes, names {HOST}: yes") in by_name(report)["smtp"].detail
        # kumod's EHLO reply, line by line (crates/kumod/src/smtp_server.rs, Command::Ehlo).
        with socket.create_connection(("127.0.0.1", smtp_port), timeout=10) as sock:
            reader = sock.makefile("rb")
            assert reader.readline() == f"220 {HOST} ESMTP KumoMTA-standin\r\n".encode()
            sock.sendall(b"EHLO client.example.net\r\n")
            lines = [reader.readline() for _ in range(6)]
            assert lines == [f"250-{HOST} Aloha client.example.net\r\n".encode(), b"250-PIPELINING\r\n",
                             b"250-ENHANCEDSTATUSCODES\r\n", b"250-8BITMIME\r\n", b"250-SMTPUTF8\r\n",
                             b"250 STARTTLS\r\n"]
            sock.sendall(b"STARTTLS\r\n")
            assert reader.readline() == b"220 Ready to Start TLS\r\n"
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            with context.wrap_socket(sock) as tls_sock:
                tls_reader = tls_sock.makefile("rb")
                tls_sock.sendall(b"EHLO client.example.net\r\nSTARTTLS\r\nQUIT\r\n")
                assert [tls_reader.readline() for _ in range(8)][-3:] == [
                    b"250 AUTH PLAIN\r\n", b"501 Cannot STARTTLS as TLS is already active\r\n",
                    b"221 So long, and thanks for all the fish!\r\n"]
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert "ready as uid" in stderr, stderr


# -- the cloud console readers -----------------------------------------------------------------

class FakeCli:
    """A CliRunner recording each argument vector and answering ``stdout``."""

    def __init__(self, stdout: str) -> None:
        self.stdout, self.calls = stdout, []

    def __call__(self, argv: Sequence[str], timeout: float) -> str:
        self.calls.append(list(argv))
        return self.stdout


AWS_ID = "i-0123456789abcdef0"
GCP_LINK = "https://www.googleapis.com/compute/v1/projects/kumo-ci-123/zones/us-central1-a/instances/kumo-c-1"
AZURE_ID = ("/subscriptions/0b1f6471-1bf0-4dda-aec3-111122223333/resourceGroups/kumo-c-rg/providers/"
            "Microsoft.Compute/virtualMachines/kumo-c-1")


def test_aws_reads_get_console_output_as_the_cli_prints_it():
    # AWS CLI v2 prints the Output already decoded from base64 (botocore decode_console_output).
    cli = FakeCli(json.dumps({"InstanceId": AWS_ID, "Timestamp": "2026-08-01T10:00:00+00:00",
                              "Output": console_text(OK_LINE)}, indent=4))
    text = aws_reader(DIRECT, run=cli).read({**NODE, "machine_id": AWS_ID})
    assert cli.calls == [["aws", "ec2", "get-console-output", "--instance-id", AWS_ID, "--region", "us-east-1",
                          "--latest", "--output", "json"]]
    assert parse_console(text).line == OK_LINE
    # Before the instance has written anything the answer has no Output.
    assert AwsConsole("us-east-1", FakeCli(json.dumps({"InstanceId": AWS_ID}))).read(NODE) == ""
    with pytest.raises(ConsoleError, match="printed no JSON"):
        AwsConsole("us-east-1", FakeCli("<html>")).read(NODE)


def test_aws_reads_the_buffered_output_where_latest_is_not_supported():
    calls = []

    def xen(argv: Sequence[str], timeout: float) -> str:
        calls.append(list(argv))
        if "--latest" in argv:
            raise ConsoleError("aws ec2 get-console-output exited 254: 'An error occurred (UnsupportedOperation)'")
        return json.dumps({"InstanceId": AWS_ID, "Output": console_text(OK_LINE)})

    assert parse_console(AwsConsole("us-east-1", xen).read(NODE)).line == OK_LINE
    assert [("--latest" in argv) for argv in calls] == [True, False]

    def down(argv: Sequence[str], timeout: float) -> str:
        raise ConsoleError("exited 255: " + ("latest" if "--latest" in argv else "buffered"))

    with pytest.raises(ConsoleError, match="exited 255: latest"):  # the error of the call that matters
        AwsConsole("us-east-1", down).read(NODE)


def test_gcp_reads_the_serial_port_output_named_by_the_self_link():
    cli = FakeCli(console_text(OK_LINE))
    text = gcp_reader(parse_deployment(targets.get("gcp").example), run=cli).read({**NODE, "machine_id": GCP_LINK})
    assert cli.calls == [["gcloud", "compute", "instances", "get-serial-port-output", "kumo-c-1",
                          "--zone", "us-central1-a", "--project", "kumo-ci-123"]]
    assert parse_console(text).line == OK_LINE


@pytest.mark.parametrize("printed", [
    # Managed boot diagnostics: a JSON string, NUL padding included (Azure/azure-cli#29374, #29890).
    json.dumps(console_text(OK_LINE) + "\x00" * 8) + "\n",
    # A storage account of the user's: the log itself.
    console_text(OK_LINE),
], ids=["managed-storage", "own-storage"])
def test_azure_reads_the_boot_log_in_both_shapes_the_cli_prints(printed):
    cli = FakeCli(printed)
    text = azure_reader(parse_deployment(targets.get("azure").example), run=cli).read({**NODE, "machine_id": AZURE_ID})
    assert cli.calls == [["az", "vm", "boot-diagnostics", "get-boot-log", "--ids", AZURE_ID]]
    assert "\x00" not in text and parse_console(text).line == OK_LINE


HOSTILE_IDS = [None, "", 42, "--help", "-i-0123456789abcdef0", f"{AWS_ID} --debug", f"{AWS_ID}\n", f"{AWS_ID};id",
               "$(id)", "../" * 3, "i-0123", GCP_LINK + "/../x", AZURE_ID + "\n",
               GCP_LINK.replace("www.googleapis.com", "evil.example"), GCP_LINK.replace("kumo-c-1", "-kumo"),
               AZURE_ID.replace("Microsoft.Compute/virtualMachines", "Microsoft.Storage/storageAccounts"),
               AZURE_ID.replace("/subscriptions/", "--subscriptions/"), "a" * 5000]


@pytest.mark.parametrize("console", [AwsConsole("us-east-1"), GcpConsole(), AzureConsole()],
                         ids=["aws", "gcp", "azure"])
@pytest.mark.parametrize("machine_id", HOSTILE_IDS, ids=range(len(HOSTILE_IDS)))
def test_a_machine_id_that_is_not_the_clouds_is_refused_before_any_call(console, machine_id):
    console.run = cli = FakeCli("")
    with pytest.raises(ConsoleError, match="machine_id .* is not .*: refused") as refused:
        console.read({**NODE, "machine_id": machine_id})
    assert refused.value.final and cli.calls == []
    assert "\n" not in str(refused.value)


def test_an_aws_region_that_is_not_one_is_refused():
    cli = FakeCli("{}")
    with pytest.raises(ConsoleError, match="kumo:deployment.region 'us-east-1 --debug' is not an AWS region"):
        AwsConsole("us-east-1 --debug", cli).read(NODE)
    assert cli.calls == []


def test_each_cloud_target_resolves_its_reader_and_ssh_has_none():
    readers = {name: targets.get(name).console_reader(parse_deployment(targets.get(name).example))
               for name in targets.names()}
    assert {name: type(r).__name__ for name, r in readers.items()} == {
        "aws": "AwsConsole", "azure": "AzureConsole", "gcp": "GcpConsole", "ssh": "NoneType"}


# -- run_cli: the one runner behind every reader -----------------------------------------------

def test_run_cli_passes_values_as_arguments_never_to_a_shell(tmp_path):
    planted = tmp_path / "planted"
    out = run_cli([sys.executable, "-c", "import sys; print(sys.argv[1])", f"$(touch {planted}); `id`"])
    assert out == f"$(touch {planted}); `id`\n" and not planted.exists()


def test_run_cli_keeps_the_stacks_secrets_from_the_cloud_cli(monkeypatch):
    secrets = {"KUMO_SECRET_RELAY_PASSWORD": "hunter2", "KUMO_SECRET_SSH_PRIVATE_KEY": "-----BEGIN",
               "PULUMI_CONFIG_PASSPHRASE": "passphrase", "PULUMI_CONFIG_PASSPHRASE_FILE": "/run/passphrase",
               "PULUMI_ACCESS_TOKEN": "pul-0123"}
    kept = {"AWS_PROFILE": "kumo-ci", "PULUMI_BACKEND_URL": "s3://kumo-state", "KUMO_SECRETS": "not a secret's name"}
    for name, value in {**secrets, **kept}.items():
        monkeypatch.setenv(name, value)
    seen = json.loads(run_cli([sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"]))
    assert not set(secrets) & set(seen)
    assert {name: seen.get(name) for name in kept} == kept and seen["PATH"] == os.environ["PATH"]


def test_run_cli_names_a_missing_tool_and_gives_up_at_once():
    with pytest.raises(ConsoleError, match="^kumo-no-such-cli: command not found on this runner's PATH") as missing:
        run_cli(["kumo-no-such-cli", "ec2", "get-console-output"])
    assert missing.value.final


def test_run_cli_names_a_tool_that_cannot_be_run(tmp_path):
    unrunnable = tmp_path / "aws"
    unrunnable.write_text("#!/bin/sh\n")
    unrunnable.chmod(0o644)
    with pytest.raises(ConsoleError, match=f"^{unrunnable}: cannot be run: ") as refused:
        run_cli([str(unrunnable), "ec2", "get-console-output"])
    assert refused.value.final


def test_run_cli_keeps_the_error_output_of_a_failed_call():
    script = "import sys; sys.stderr.write('An error occurred (UnauthorizedOperation)\\n'); sys.exit(254)"
    with pytest.raises(ConsoleError) as failed:
        run_cli([sys.executable, "-c", script])
    assert "exited 254: 'An error occurred (UnauthorizedOperation)'" in str(failed.value)
    assert not failed.value.final


def test_run_cli_stops_a_call_that_does_not_answer():
    with pytest.raises(ConsoleError, match="did not answer within 0.5 s"):
        run_cli([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
