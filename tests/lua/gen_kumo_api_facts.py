"""Generate tests/lua/kumo_api_facts.lua, the facts the KumoMTA test double is built from.

    python3 tests/lua/gen_kumo_api_facts.py PATH/TO/kumo_api.json > tests/lua/kumo_api_facts.lua

kumo_api.json is KumoMTA's Lua API extracted from its Rust source (every fact names the
file and line in the KumoCorp/kumomta repository that proves it). The generated Lua file is
committed, so the tests never need the extraction: regenerate it when KumoMTA changes, and
review the diff like any other change to the double.

Only what the double needs is kept: every function name kumod registers, the parameter
structs of the functions the double implements (field kinds already resolved from the Rust
types, required fields, deny_unknown_fields), the enums they use, the events, the Message
methods and the fields of a From/To header's address list.
"""

from __future__ import annotations

import json
import sys

# The kumo.* functions the double implements with a struct check; everything else kumod
# registers exists in the double only as a name (calling it fails the test, clearly).
STRUCT_FUNCTIONS = (
    "kumo.start_esmtp_listener", "kumo.start_http_listener", "kumo.define_spool",
    "kumo.configure_local_logs", "kumo.make_queue_config", "kumo.make_egress_path",
    "kumo.make_listener_domain", "kumo.dkim.rsa_sha256_signer",
    "kumo.make_egress_source", "kumo.make_egress_pool", "kumo.configure_bounce_classifier",
    "kumo.configure_redis_throttles", "kumo.memoize", "kumo.configure_log_hook",
    # tsa-daemon's listener (its own policy, tsa_init.lua), not kumod's.
    "tsa.start_http_listener",
)
INTEGERS = {"u8": (0, 2**8 - 1), "u16": (0, 2**16 - 1), "u32": (0, 2**32 - 1), "u64": (0, 2**53),
            "usize": (0, 2**53), "i32": (-2**31, 2**31 - 1), "i64": (-2**53, 2**53)}


def base_type(rust_type: str) -> str:
    t = rust_type.strip()
    while True:
        for wrapper in ("Option<", "Box<", "Arc<"):
            if t.startswith(wrapper) and t.endswith(">"):
                t = t[len(wrapper):-1].strip()
                break
        else:
            return t


def field_kind(field: dict, enums: dict) -> dict:
    """How the double checks a value: the Rust type reduced to what a Lua value can be."""
    base = base_type(field["type"])
    if field.get("duration"):
        return {"kind": "duration"}
    if base in enums:
        return {"kind": "enum", "variants": enums[base]["variants"], "enum": base}
    if base == "bool":
        return {"kind": "bool"}
    if base in INTEGERS:
        low, high = INTEGERS[base]
        return {"kind": "integer", "min": low, "max": high, "rust": base}
    if base in ("String", "PathBuf"):
        return {"kind": "string"}
    if base == "IpAddr":
        return {"kind": "ip"}
    if base == "CidrSet":
        return {"kind": "cidrs"}
    if base == "KeySource":
        return {"kind": "keysource"}
    if base == "Vec<String>":
        return {"kind": "strings"}
    if base.startswith(("Vec<", "HashMap<", "OrderMap<")):
        return {"kind": "table", "rust": base}
    # Types with their own serde forms (MinFree '10%', ThrottleSpec '100/s', LimitSpec,
    # TraceHeaders, CidrMap, ...): not looked into.
    return {"kind": "unchecked", "rust": base}


def lua(value, indent: str = "") -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
    if value is None:
        return "nil"
    inner = indent + "  "
    if isinstance(value, (list, tuple)):
        if not value:
            return "{}"
        return "{ " + ", ".join(lua(v, inner) for v in value) + " }"
    items = [f"{inner}[{lua(k)}] = {lua(v, inner)}," for k, v in sorted(value.items())]
    return "{\n" + "\n".join(items) + "\n" + indent + "}" if items else "{}"


def facts(api: dict) -> dict:
    enums = api["enums"]
    structs = {}
    for name in STRUCT_FUNCTIONS:
        key = api["functions"][name]["struct"]
        st = api["structs"][key]
        structs[name] = {
            "name": st["name"], "source": st["source"], "deny_unknown_fields": st["deny_unknown_fields"],
            "fields": {f: {**field_kind(info, enums), "required": bool(info.get("required"))}
                       for f, info in st["fields"].items()},
        }
    protocol = api["nested"]["kumo.make_queue_config.protocol"]
    smtp = api["structs"][api["nested"]["kumo.make_queue_config.protocol.smtp"]["struct"]]
    nested = {
        "kumo.make_queue_config.protocol": {"source": protocol["source"], "variant_keys": protocol["keys"]},
        "kumo.make_queue_config.protocol.smtp": {
            "name": smtp["name"], "source": smtp["source"], "deny_unknown_fields": smtp["deny_unknown_fields"],
            "fields": {f: {**field_kind(info, enums), "required": bool(info.get("required"))}
                       for f, info in smtp["fields"].items()},
        },
    }
    events = {}
    for name, ev in api["events"].items():
        events[name] = {"source": ev.get("source") or "?", "kumod": ev.get("kumod", False),
                        # KumoMTA treats every event not declared Multiple as Single
                        # (crates/config/src/lib.rs does_callback_allow_multiple).
                        "multiple": bool(ev.get("multiple")), "returns": ev.get("returns") or "?"}
        if "args" in ev:
            events[name]["args"] = ev["args"]
    return {
        "kumomta_commit": api["kumomta_commit"],
        "functions": {name: {"source": (f["sources"] or ["?"])[0], "kumod": f.get("kumod", False)}
                      for name, f in api["functions"].items()},
        "structs": structs,
        "nested": nested,
        "events": events,
        "message_methods": api["message_methods"],
        "header_address_list_fields": api["header_address_list_fields"],
        "notes": {k: api["notes"][k] for k in ("kumo.on", "signer", "keysource", "duration", "cidrset")},
    }


def render(api: dict) -> str:
    f = facts(api)
    return (
        "-- GENERATED by tests/lua/gen_kumo_api_facts.py from kumo_api.json; do not edit by hand.\n"
        f"-- KumoMTA commit {f['kumomta_commit']} (repository KumoCorp/kumomta). Sources, per fact below:\n"
        "--   functions: crates/*/src (the registration site of each kumo.* function)\n"
        "--   structs: the serde parameter struct of each function (deny_unknown_fields, #[serde(default)])\n"
        "--   events: declare_event! sites (Single / Multiple, arguments, return type)\n"
        "--   message_methods: crates/message/src/message.rs (impl UserData for Message)\n"
        "--   header_address_list_fields: crates/message/src/address.rs (impl UserData for HeaderAddressList)\n"
        "return " + lua(f) + "\n"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: gen_kumo_api_facts.py PATH/TO/kumo_api.json > tests/lua/kumo_api_facts.lua")
    with open(sys.argv[1], encoding="utf-8") as fh:
        sys.stdout.write(render(json.load(fh)))
