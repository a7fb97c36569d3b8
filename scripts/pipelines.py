#!/usr/bin/env python3
"""The per-service pipelines' dependency data, from `cargo metadata`.

One graph serves three users, so they cannot disagree:
  scripts/changed-services.sh  which pipelines a diff must run  (`affected`)
  scripts/gen-workflows.sh     each workflow's path filters     (`workflow`)
  scripts/pipeline.sh          a service's crate facts          (`info`)

The graph is the workspace's path dependencies (`cargo metadata
--format-version 1 --no-deps`). A change to crate C reaches:
  - every crate whose *library or build* includes C: the reverse closure over
    normal and build edges;
  - plus every crate that *dev*-depends on one of those: its tests link them.
    Not further: a dev-dependency is not part of the library others link.
A crate's inputs (its workflow's paths) are the exact inverse: its own crate,
the closure of its normal/build dependencies, and its dev-dependencies with
their closures. `self-check` verifies the two agree for every pair.

A pipeline runs for every crate no library depends on: the services, the
`shopfast` binary, and development tools like protocheck. kit, contracts and
saga are libraries: a change there runs the pipelines of their dependents.

Standard library only: it runs wherever python3 does.
"""
import json
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Inputs outside crates/ that a crate reads (found with `grep -rn '\.\./\.\./'
# crates`). BUILD inputs are part of what the crate builds, so they reach its
# dependents like a change to the crate; TEST inputs only matter to the
# crate's own tests. A directory ends with '/'.
BUILD_INPUTS = {
    "proto/": "contracts",  # crates/contracts/build.rs compiles them
}
TEST_INPUTS = {
    "deploy/prometheus/": "shopfast",  # tests/prometheus.rs loads the config and rules
    "scripts/grpc_reflect.py": "shopfast",  # tests/processes.rs runs it
    "scripts/requirements.txt": "shopfast",  # what grpc_reflect.py and the W3C harness need
    "scripts/w3c-trace-context.sh": "shopfast",  # tests/w3c.rs runs the suite through it
    "third_party/w3c-trace-context/": "shopfast",
}
# What every pipeline builds with or runs: the lock file and the workspace
# manifest (versions of everything), the pipeline itself.
EVERY_PIPELINE = [
    "Cargo.lock",
    "Cargo.toml",
    "scripts/pipeline.sh",
    "scripts/pipelines.py",
]
# The image: one multi-call binary (the Dockerfile builds `-p shopfast`), so
# the pipelines of the crates it links package it, under their own names.
IMAGE_CRATE = os.environ.get("IMAGE_CRATE", "shopfast")
IMAGE_INPUTS = ["Dockerfile", ".dockerignore", "deploy/docker/rootfs.sh"]  # rootfs.sh: the Dockerfile's final filesystem

# System tools a crate's own tests use, recognised by what the test code
# names (comment lines ignored): marker regex -> tool.
TOOL_MARKERS = {
    r"SHOPFAST_TEST_REDIS_URL": "redis",
    r"/usr/bin/etcd\b": "etcd",
    r"/usr/bin/prometheus\b|promtool": "prometheus",
    r"/usr/bin/chromium\b": "chromium",
    r"grpc_reflect\.py|w3c-trace-context\.sh": "python",
}


def under(path, prefixes):
    """Whether `path` is one of `prefixes` or inside one ending with '/'."""
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in prefixes)


class Crate:
    def __init__(self, pkg, root):
        self.name = pkg["name"]
        self.dir = os.path.relpath(os.path.dirname(pkg["manifest_path"]), root).replace(os.sep, "/")
        self.version = pkg["version"]
        self.rust_version = pkg.get("rust_version")
        kinds = [k for t in pkg["targets"] for k in t["kind"]]
        self.has_lib = any(k in ("lib", "rlib", "proc-macro") for k in kinds)
        self.has_bin = "bin" in kinds
        self.test_targets = sorted(t["name"] for t in pkg["targets"] if "test" in t["kind"])
        # Path dependencies only, as directories: mapped to crates once all are known.
        self.path_deps = [
            (os.path.relpath(d["path"], root).replace(os.sep, "/"), d.get("kind") or "normal")
            for d in pkg["dependencies"]
            if d.get("path")
        ]
        self.lib_deps = set()  # normal and build
        self.dev_deps = set()


class Workspace:
    def __init__(self, metadata=None):
        if metadata is None:
            out = subprocess.run(
                ["cargo", "metadata", "--format-version", "1", "--no-deps"],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            metadata = json.loads(out)
        root = metadata["workspace_root"]
        members = set(metadata["workspace_members"])
        self.crates = {p["name"]: Crate(p, root) for p in metadata["packages"] if p["id"] in members}
        by_dir = {c.dir: c.name for c in self.crates.values()}
        for crate in self.crates.values():
            for path, kind in crate.path_deps:
                dep = by_dir.get(path)
                if dep is None or dep == crate.name:
                    continue
                (crate.dev_deps if kind == "dev" else crate.lib_deps).add(dep)
        libraries = {d for c in self.crates.values() if c.has_lib for d in c.lib_deps}
        self.targets = sorted(n for n in self.crates if n not in libraries)
        in_image = self.lib_closure(IMAGE_CRATE) if IMAGE_CRATE in self.crates else set()
        self.packaged = [t for t in self.targets if t in in_image]

    def lib_closure(self, name):
        """`name` and every crate its library or build includes."""
        seen, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(self.crates[n].lib_deps)
        return seen

    def inputs(self, name):
        """Every crate whose change must run `name`'s pipeline."""
        crates = self.lib_closure(name)
        for dev in self.crates[name].dev_deps:
            crates |= self.lib_closure(dev)
        return crates

    def affected_by_crates(self, changed):
        """The pipelines a change to the `changed` crates must run."""
        reach = set(changed)
        todo = list(changed)
        while todo:  # reverse closure over normal and build edges
            n = todo.pop()
            for c in self.crates.values():
                if n in c.lib_deps and c.name not in reach:
                    reach.add(c.name)
                    todo.append(c.name)
        reach |= {c.name for c in self.crates.values() if c.dev_deps & reach}
        return {t for t in self.targets if t in reach}

    def classify(self, path):
        """(pipelines, reason) for one changed path; empty when none applies."""
        path = path.replace(os.sep, "/")
        if under(path, EVERY_PIPELINE):
            return set(self.targets), "used by every pipeline"
        if under(path, IMAGE_INPUTS):
            return set(self.packaged), f"the image of {IMAGE_CRATE}"
        match = re.fullmatch(r"\.github/workflows/([^/]+)\.yml", path)
        if match and match.group(1) in self.targets:
            return {match.group(1)}, "its workflow"
        for prefix, crate in BUILD_INPUTS.items():
            if path == prefix or path.startswith(prefix):
                return self.affected_by_crates({crate}), f"built into {crate}"
        for prefix, crate in TEST_INPUTS.items():
            if (path == prefix or path.startswith(prefix)) and crate in self.targets:
                return {crate}, f"read by {crate}'s tests"
        owner = max(
            (c for c in self.crates.values() if path.startswith(c.dir + "/")),
            key=lambda c: len(c.dir),
            default=None,
        )
        if owner is not None:
            return self.affected_by_crates({owner.name}), f"in crate {owner.name}"
        return set(), "outside every pipeline's inputs"

    def affected(self, paths):
        services, reasons = set(), []
        for path in paths:
            hit, why = self.classify(path)
            services |= hit
            reasons.append((path, why, sorted(hit)))
        return sorted(services), reasons

    def paths(self, name):
        """The path filters of `name`'s workflow: the inverse of `classify`."""
        inputs = self.inputs(name)
        dirs = {self.crates[c].dir + "/" for c in inputs}
        dirs |= {p for p, c in BUILD_INPUTS.items() if c in inputs}
        dirs |= {p for p, c in TEST_INPUTS.items() if c == name}
        dirs |= set(EVERY_PIPELINE)
        if name in self.packaged:
            dirs |= set(IMAGE_INPUTS)
        dirs.add(f".github/workflows/{name}.yml")
        return sorted(p + "**" if p.endswith("/") else p for p in dirs)

    def proto_packages(self, name):
        """The proto packages a service owns (proto/shopfast/<name>/) and the
        shopfast packages those import (common types on its wire), or []."""
        own_dir = os.path.join(ROOT, "proto", "shopfast", name)
        if not os.path.isdir(own_dir):
            return []
        packages, imports = set(), set()
        for dirpath, _, files in os.walk(own_dir):
            for f in files:
                if f.endswith(".proto"):
                    text = open(os.path.join(dirpath, f), encoding="utf-8").read()
                    packages |= set(re.findall(r"^\s*package\s+([\w.]+)\s*;", text, re.M))
                    imports |= set(re.findall(r'^\s*import\s+(?:public\s+|weak\s+)?"(shopfast/[^"]+)"', text, re.M))
        for imp in imports:
            path = os.path.join(ROOT, "proto", imp)
            if os.path.isfile(path):
                text = open(path, encoding="utf-8").read()
                packages |= set(re.findall(r"^\s*package\s+([\w.]+)\s*;", text, re.M))
        return sorted(packages)

    def tools(self, name):
        """The system tools `name`'s own tests use (TOOL_MARKERS)."""
        found = set()
        crate_dir = os.path.join(ROOT, self.crates[name].dir)
        for sub in ("src", "tests"):
            for dirpath, _, files in os.walk(os.path.join(crate_dir, sub)):
                for f in files:
                    if not f.endswith(".rs"):
                        continue
                    for line in open(os.path.join(dirpath, f), encoding="utf-8"):
                        if line.lstrip().startswith("//"):
                            continue
                        found |= {tool for marker, tool in TOOL_MARKERS.items() if re.search(marker, line)}
        return sorted(found)


# --- workflows -------------------------------------------------------------


def workspace_rust_version():
    """`[workspace.package] rust-version`: the toolchain CI builds with
    (members inherit it only if they say so, so metadata may not show it)."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        return None
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        return tomllib.load(f).get("workspace", {}).get("package", {}).get("rust-version")


def yaml_list(items, indent):
    pad = " " * indent
    return "".join(f"{pad}- {quote(i)}\n" for i in items)


def quote(s):
    # Globs start with characters YAML reads as syntax ('*', '.'): always quoted.
    return "'" + s.replace("'", "''") + "'"


def workflow(ws, name):
    crate = ws.crates[name]
    paths = ws.paths(name)
    tools = ws.tools(name)
    has_protos = bool(ws.proto_packages(name))
    rust = crate.rust_version or workspace_rust_version() or "stable"
    inputs = sorted(ws.inputs(name) - {name})
    out = []
    w = out.append
    w("# Generated by scripts/gen-workflows.sh from `cargo metadata`: do not edit,\n")
    w("# run `scripts/gen-workflows.sh` (`--check` fails when this file is stale).\n")
    w(f"# Runs scripts/pipeline.sh {name} when {name}, a crate it builds or tests\n")
    w(f"# against ({', '.join(inputs) or 'none'}), or an input of those changes.\n")
    w(f"name: {name}\n\n")
    w("on:\n")
    w("  push:\n")
    w("    branches: [main]\n")
    w("    paths:\n")
    w(yaml_list(paths, 6))
    w("  pull_request:\n")
    w("    paths:\n")
    w(yaml_list(paths, 6))
    w("  workflow_dispatch: {}\n\n")
    w("permissions:\n  contents: read\n\n")
    w("concurrency:\n")
    w(f"  group: {name}-${{{{ github.ref }}}}\n")
    w("  cancel-in-progress: true\n\n")
    w("jobs:\n")
    w("  pipeline:\n")
    w(f"    name: {name} pipeline\n")
    w("    runs-on: ubuntu-latest\n")
    w("    timeout-minutes: 90\n")
    # Every service's tests may open a PostgreSQL database (kit::testing),
    # and with CI=true a missing server fails them instead of skipping.
    w("    services:\n")
    w("      postgres:\n")
    w("        image: postgres:16\n")
    w("        env:\n")
    w("          POSTGRES_HOST_AUTH_METHOD: trust\n")
    w("        ports: ['5432:5432']\n")
    w("        options: >-\n")
    w("          --health-cmd pg_isready --health-interval 5s --health-timeout 5s --health-retries 20\n")
    if "redis" in tools:
        w("      redis:\n")
        w("        image: redis:7\n")
        w("        ports: ['6379:6379']\n")
        w("        options: >-\n")
        w("          --health-cmd 'redis-cli ping' --health-interval 5s --health-timeout 5s --health-retries 20\n")
    w("    env:\n")
    w("      CI: 'true'\n")
    w("      CARGO_TERM_COLOR: never\n")
    w("      BUILD_NUMBER: ${{ github.run_number }}\n")
    w("      ENVIRONMENT: ci\n")
    if has_protos:
        # A pull request is judged against its base branch, a push against
        # the commit before it (pipeline.sh falls back to main for a new branch).
        w("      CONTRACT_BASE: >-\n")
        w("        ${{ github.event_name == 'pull_request' && format('origin/{0}', github.base_ref)\n")
        w("        || github.event.before }}\n")
    w("    steps:\n")
    w("      - uses: actions/checkout@v4\n")
    if has_protos:
        w("        with:\n")
        w("          fetch-depth: 0  # the contract check reads the base branch's protos\n")
    w("      - name: Rust toolchain\n")
    w(f"        run: rustup toolchain install {rust} --profile minimal && rustup default {rust}\n")
    w("      - uses: actions/cache@v4\n")
    w("        with:\n")
    w("          path: |\n")
    w("            ~/.cargo/registry\n")
    w("            ~/.cargo/git\n")
    w("            target\n")
    w(f"          key: {name}-${{{{ runner.os }}}}-${{{{ hashFiles('Cargo.lock') }}}}\n")
    w(f"          restore-keys: {name}-${{{{ runner.os }}}}-\n")
    apt = [pkg for tool, pkg in (("etcd", "etcd-server"), ("prometheus", "prometheus")) if tool in tools]
    if apt:
        w("      - name: Test tools\n")
        w(f"        run: sudo apt-get update -q && sudo apt-get install -y -q {' '.join(apt)}\n")
    if "chromium" in tools:
        # The tests look for /usr/bin/chromium; the runner has Google Chrome
        # (Ubuntu's chromium package is only a snap stub).
        w("      - name: Chromium for the console page test\n")
        w('        run: sudo ln -sf "$(command -v google-chrome)" /usr/bin/chromium\n')
    if "python" in tools:
        w("      - name: Python tools for the tests\n")
        w("        run: python3 -m pip install -q -r scripts/requirements.txt\n")
    w(f"      - name: scripts/pipeline.sh {name}\n")
    w(f"        run: scripts/pipeline.sh {name}\n")
    return "".join(out)


# --- self-check --------------------------------------------------------------


def self_check(ws):
    failures = []

    def expect(label, paths, must=(), must_not=(), exactly=None):
        got, _ = ws.affected(paths)
        ok = set(must) <= set(got) and not set(must_not) & set(got) and (exactly is None or set(got) == set(exactly))
        print(f"{'ok  ' if ok else 'FAIL'} {label}: {' '.join(paths)} -> {' '.join(got) or '(none)'}")
        if not ok:
            failures.append(label)

    services = ["users", "products", "payments", "orders", "registry", "gateway", "console", "loadgen", "deployer"]
    services += ["fulfilment"]
    missing = [s for s in services + ["shopfast"] if s not in ws.targets]
    if missing:
        failures.append(f"not pipeline targets: {missing}")
    kit_users = [t for t in ws.targets if "kit" in ws.inputs(t)]
    contract_users = [t for t in ws.targets if "contracts" in ws.inputs(t)]
    expect(
        "a service's own crate",
        ["crates/products/src/lib.rs"],
        must=["products", "shopfast"],
        must_not=["users", "payments", "registry", "console", "loadgen", "deployer", "protocheck"],
    )
    expect("a shared library", ["crates/kit/src/lib.rs"], must=services + ["shopfast"], exactly=kit_users)
    expect(
        "a proto (through contracts)",
        ["proto/shopfast/products/v1/products.proto"],
        exactly=contract_users,
        must=["users", "products", "payments", "orders", "gateway", "shopfast"],
        must_not=["registry", "console", "loadgen", "deployer"],
    )
    expect("the saga engine", ["crates/saga/src/lib.rs"], must=["orders", "shopfast"], must_not=["products"])
    expect("a test input of shopfast", ["deploy/prometheus/rules.yml"], exactly=["shopfast"])
    expect("the lock file", ["Cargo.lock"], exactly=ws.targets)
    expect("a workflow", [".github/workflows/users.yml"], exactly=["users"])
    expect("the image recipe", ["Dockerfile"], must=services + ["shopfast"], must_not=["protocheck"])
    expect("documentation", ["README.md", "deploy/README.md"], exactly=[])
    # The workflows' filters and the change detection come from one graph:
    # a crate is in a pipeline's inputs exactly when changing it runs that pipeline.
    for target in ws.targets:
        for crate in ws.crates.values():
            runs = target in ws.affected_by_crates({crate.name})
            listed = crate.name in ws.inputs(target)
            if runs != listed:
                failures.append(f"{crate.name} -> {target}: runs={runs} but listed={listed}")
    # And path by path: a file under any of a workflow's filters runs that
    # pipeline, and a file that runs a pipeline is under one of its filters.
    samples = {c.dir + "/src/lib.rs" for c in ws.crates.values()}
    samples |= {p + "x" if p.endswith("/") else p for p in [*BUILD_INPUTS, *TEST_INPUTS, *EVERY_PIPELINE, *IMAGE_INPUTS]}
    samples |= {f".github/workflows/{t}.yml" for t in ws.targets}
    for target in ws.targets:
        filters = ws.paths(target)
        for path in sorted(samples):
            runs = target in ws.classify(path)[0]
            filtered = any(path.startswith(f[:-2]) if f.endswith("/**") else path == f for f in filters)
            if runs != filtered:
                failures.append(f"{path} -> {target}: runs={runs} but under its filters={filtered}")
    print(f"{'ok  ' if not failures else 'FAIL'} workflow paths and change detection agree for every crate and pipeline")
    if failures:
        print("self-check failed: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


# --- commands ------------------------------------------------------------------


def main(argv):
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    ws = Workspace()
    if cmd == "targets":
        print("\n".join(ws.targets))
    elif cmd == "affected":
        verbose = "-v" in args
        paths = [a for a in args if a != "-v"]
        services, reasons = ws.affected(paths)
        if verbose:
            for path, why, hit in reasons:
                print(f"  {path}: {why} -> {' '.join(hit) or '(none)'}", file=sys.stderr)
        if services:
            print("\n".join(services))
    elif cmd == "paths":
        print("\n".join(ws.paths(args[0])))
    elif cmd == "workflow":
        sys.stdout.write(workflow(ws, args[0]))
    elif cmd == "info":
        # Shell assignments for scripts/pipeline.sh to eval.
        name = args[0]
        if name not in ws.targets:
            print(f"unknown pipeline {name!r}; pipelines: {' '.join(ws.targets)}", file=sys.stderr)
            return 2
        c = ws.crates[name]
        facts = {
            "CRATE_DIR": c.dir,
            "CRATE_VERSION": c.version,
            "HAS_LIB": "1" if c.has_lib else "",
            "HAS_BIN": "1" if c.has_bin else "",
            "TEST_TARGETS": " ".join(c.test_targets),
            "PROTO_PACKAGES": " ".join(ws.proto_packages(name)),
            "IMAGE_CRATE": IMAGE_CRATE if name in ws.packaged else "",
        }
        for k, v in facts.items():
            print(f"{k}={shlex.quote(v)}")
    elif cmd == "self-check":
        return self_check(ws)
    else:
        print(f"unknown command {cmd!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
