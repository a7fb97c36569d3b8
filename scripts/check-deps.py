#!/usr/bin/env python3
"""The dependency rules, checked (CI runs this; exit 1 on a violation).

1. Layers. The kit's crates stand in layers and a crate may depend only on
   crates of lower layers (LAYERS below); `kit-core` and `registry-wire`,
   what domain code may use, pull in no transport, no database and no
   runtime anywhere in their dependency closure (FORBIDDEN_IN_PURE).
2. No cycles between the modules of any workspace crate: a module's
   references to its siblings (`crate::x`, `super::x`, `use x::` of a
   sibling), tests excluded, form a graph without strongly connected
   components larger than one module.
3. Domain modules (DOMAIN_MODULES) are pure: they name no crate but std, the
   pure crates and a short list of data crates (serde, thiserror, uuid), and
   no sibling module that is not itself a domain module.

Standard library only; the graph comes from `cargo metadata`.
"""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lower layers first. A kit crate may depend on kit crates of lower layers only.
LAYERS = [
    ["kit-core"],
    ["kit-resilience", "kit-tls", "registry-wire"],
    ["kit-telemetry"],
    ["kit-client"],
    ["kit"],
]
PURE = ["kit-core", "registry-wire"]
FORBIDDEN_IN_PURE = {"tonic", "sqlx", "tokio", "axum", "hyper", "h2", "reqwest", "http", "prost", "tower"}

# Domain modules: the rules of each service, free of transport and SQL.
DOMAIN_MODULES = [
    "crates/users/src/domain.rs",
    "crates/products/src/domain.rs",
    "crates/orders/src/domain.rs",
    "crates/payments/src/domain.rs",
    "crates/registry/src/model.rs",
    # The deploy controller's judgement: the rollout record, canary steps and
    # state, the statistics, the evidence read out of /metrics text.
    "crates/deployer/src/model.rs",
    "crates/deployer/src/canary.rs",
    "crates/deployer/src/canary_state.rs",
    "crates/deployer/src/analysis.rs",
    "crates/deployer/src/evidence.rs",
]
# Data and arithmetic crates: no I/O, no runtime (statrs: the canary's statistics).
# (humantime, prometheus_parse: text formats read and written in memory).
DOMAIN_MAY_NAME = {
    "std", "core", "alloc", "kit_core", "registry_wire", "serde", "serde_json", "statrs", "thiserror", "uuid",
    "humantime", "prometheus_parse",
}

# Names that look like paths but are not crates (Self::, T::, primitive types' consts).
NOT_CRATES = {"crate", "super", "self", "Self"}


def metadata():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def check_layers(meta, failures):
    members = {p["id"]: p for p in meta["packages"] if p["id"] in meta["workspace_members"]}
    by_name = {p["name"]: p for p in members.values()}
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    for name in rank:
        if name not in by_name:
            failures.append(f"layers: {name} is not a workspace crate")
    for name, package in by_name.items():
        if name not in rank:
            continue
        for dep in package["dependencies"]:
            if dep["kind"] == "dev" or dep["name"] not in rank:
                continue
            if rank[dep["name"]] >= rank[name]:
                failures.append(f"layers: {name} (layer {rank[name]}) depends on {dep['name']} (layer {rank[dep['name']]})")
    # Closure of the pure crates over normal dependencies, from the resolve graph.
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    names = {p["id"]: p["name"] for p in meta["packages"]}
    for pure in PURE:
        start = by_name[pure]["id"]
        seen, stack, parent = {start}, [start], {}
        while stack:
            node = stack.pop()
            for dep in nodes[node]["deps"]:
                if not any(k["kind"] in (None, "normal") for k in dep["dep_kinds"]):
                    continue
                if dep["pkg"] not in seen:
                    seen.add(dep["pkg"])
                    parent[dep["pkg"]] = node
                    stack.append(dep["pkg"])
        for pkg in seen:
            if names[pkg] in FORBIDDEN_IN_PURE:
                path, at = [names[pkg]], pkg
                while at in parent:
                    at = parent[at]
                    path.append(names[at])
                failures.append(f"purity: {pure} reaches {names[pkg]} ({' -> '.join(reversed(path))})")


def without_tests(text):
    """The source up to its test module (`#[cfg(test)]` at the start of a line)."""
    cut = re.search(r"^#\[cfg\(test\)\]", text, re.M)
    return text[: cut.start()] if cut else text


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def module_of(src_dir, path):
    """The top-level module a file belongs to (`lib`/`main` for the root)."""
    rel = os.path.relpath(path, src_dir).replace(os.sep, "/")
    first = rel.split("/")[0]
    return first[:-3] if first.endswith(".rs") else first


def check_module_cycles(meta, failures):
    for package in meta["packages"]:
        if package["id"] not in meta["workspace_members"]:
            continue
        for target in package["targets"]:
            if not set(target["kind"]) & {"lib", "bin"}:
                continue
            src_dir = os.path.dirname(target["src_path"])
            root_module = os.path.basename(target["src_path"])[:-3]
            files = []
            for dirpath, _, filenames in os.walk(src_dir):
                files += [os.path.join(dirpath, f) for f in filenames if f.endswith(".rs")]
            modules = {module_of(src_dir, f) for f in files} - {root_module}
            edges = {m: set() for m in modules}
            for path in files:
                me = module_of(src_dir, path)
                if me == root_module:
                    continue
                text = strip_comments(without_tests(open(path, encoding="utf-8").read()))
                nested = os.path.dirname(os.path.relpath(path, src_dir)) != ""
                refs = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text))
                if not nested:  # super:: of a top-level module is the crate root
                    refs |= set(re.findall(r"\bsuper::([a-z_][a-z0-9_]*)", text))
                for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
                    refs |= {item.strip().split("::")[0] for item in group.split(",")}
                edges[me] |= {r for r in refs if r in modules and r != me}
            for component in strongly_connected(edges):
                if len(component) > 1:
                    failures.append(f"module cycle in {package['name']} ({target['name']}): {' <-> '.join(sorted(component))}")


def strongly_connected(edges):
    """Tarjan's algorithm, iteratively."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                out.append(component)
    return out


def check_domain_modules(failures):
    domain_names = {os.path.basename(p)[:-3] for p in DOMAIN_MODULES}
    for rel in DOMAIN_MODULES:
        path = os.path.join(ROOT, rel)
        if not os.path.exists(path):
            failures.append(f"domain: {rel} does not exist (update DOMAIN_MODULES)")
            continue
        text = strip_comments(without_tests(open(path, encoding="utf-8").read()))
        text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)  # string literals name nothing
        # Inside a use group (`use serde::{de::Error}`) names are the group's own
        # paths; `use crate::{store::Row}` still names the sibling `store`.
        grouped = [m for g in re.findall(r"\bcrate::\{([^;]*)\}", text) for m in re.findall(r"\b([a-z_][a-z0-9_]*)::", g)]
        text = re.sub(r"::\{[^;]*\}", "", text) + "".join(f" crate::{m}::" for m in grouped)
        # The first segment of every path: `use x::…`, `x::y`, and `use x;`.
        named = set(re.findall(r"(?<![A-Za-z0-9_:.])([a-z_][a-z0-9_]*)::", text))
        named |= set(re.findall(r"^\s*(?:pub\s+)?use\s+([a-z_][a-z0-9_]*)\s*;", text, re.M))
        locals_ = set(re.findall(r"\b(?:mod|enum|struct|trait|type)\s+([A-Za-z_][A-Za-z0-9_]*)", text))
        for name in sorted(named - NOT_CRATES - DOMAIN_MAY_NAME - locals_):
            if re.fullmatch(r"[iu](8|16|32|64|128|size)|f32|f64|char|str|bool", name):
                continue
            failures.append(f"domain: {rel} names `{name}` (a domain module may name only {sorted(DOMAIN_MAY_NAME)})")
        for sibling in re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text):
            if sibling not in domain_names:
                failures.append(f"domain: {rel} uses crate::{sibling}, which is not a domain module")


def self_test():
    """The checks catch what they are for, on made-up inputs."""
    import tempfile

    failures = []
    cycle = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    big = [c for c in strongly_connected(cycle) if len(c) > 1]
    if big != [{"a", "b", "c"}]:
        failures.append(f"a -> b -> c -> a not found as one cycle: {big}")
    if [c for c in strongly_connected({"a": {"b"}, "b": set()}) if len(c) > 1]:
        failures.append("a -> b reported as a cycle")
    global ROOT, DOMAIN_MODULES
    saved = ROOT, DOMAIN_MODULES
    with tempfile.TemporaryDirectory() as root:
        with open(os.path.join(root, "domain.rs"), "w", encoding="utf-8") as f:
            f.write(
                "use kit_core::error::DomainError;\nuse tonic::Status;\nuse crate::store::Row;\nuse crate::{api::X};\n"
                "fn f() { let n = \"sqlx::x\"; x.parse::<u16>(); } // axum::y\n"
                "#[cfg(test)]\nmod tests { use tokio::time; }\n"
            )
        ROOT, DOMAIN_MODULES = root, ["domain.rs"]
        found = []
        check_domain_modules(found)
        ROOT, DOMAIN_MODULES = saved
    wanted = ["names `tonic`", "uses crate::store", "uses crate::api"]
    if len(found) != 3 or not all(any(w in f for f in found) for w in wanted):
        failures.append(f"domain check found {found}, wanted exactly {wanted}")
    for failure in failures:
        print(f"self-test FAILED: {failure}")
    if not failures:
        print("self-test: cycles, non-cycles, impure names and sibling modules told apart")
    return 1 if failures else 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    meta = metadata()
    failures = []
    check_layers(meta, failures)
    check_module_cycles(meta, failures)
    check_domain_modules(failures)
    if failures:
        print("dependency rules broken:")
        for failure in failures:
            print(f"  {failure}")
        return 1
    print(
        f"dependency rules hold: {len(sum(LAYERS, []))} kit crates in {len(LAYERS)} layers, "
        f"{', '.join(PURE)} free of {', '.join(sorted(FORBIDDEN_IN_PURE))}; no module cycles; "
        f"{len(DOMAIN_MODULES)} domain modules pure"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
