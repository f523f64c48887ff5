#!/usr/bin/env python3
"""The walls between the crates (docs/architecture.md), checked on `cargo metadata`.

Four rules, each a function below that returns what breaks it:

1. `qtasks_walls`: which qtasks crates each crate may depend on, directly or through others,
   with every feature on, on every target, through normal and build dependencies (dev
   dependencies are a crate's tests, and tests may reach further).
2. `outside_walls`: which outside crates each crate must not reach: the core no engine client,
   web server, RPC or telemetry crate; an engine no other engine's client; a surface no engine
   client.
3. `feature_walls`: a cargo feature that turns on an engine crate turns on no other engine
   (the `rabbitmq` feature must not force `redis` on).
4. `private_walls`: `__private` (what the macros' generated code calls) and `bench_hooks` (what
   the micro-benchmarks call) are used only where they are meant to be.

`--self-test` breaks each rule on purpose, on a copy of the real metadata and in a scratch
tree, and fails unless every break is caught: a check that cannot fail proves nothing.
A crate with no rule fails the check, so a new engine or surface cannot slip by unnamed.
"""

import copy
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENGINES = {"qtasks-redis", "qtasks-rabbitmq", "qtasks-postgres", "qtasks-kafka"}
SURFACES = {"qtasks-metrics", "qtasks-grpc", "qtasks-web", "qtasks-otel"}

# crate: the qtasks crates it may depend on ("*": any).
ALLOWED_QTASKS = {
    "qtasks-triggers": set(),
    "qtasks-macros": {"qtasks-triggers"},
    "qtasks-core": {"qtasks-triggers"},
    # Engines: the core's public API only; never another engine, never a surface.
    "qtasks-redis": {"qtasks-core", "qtasks-triggers"},
    "qtasks-rabbitmq": {"qtasks-core", "qtasks-triggers"},
    "qtasks-postgres": {"qtasks-core", "qtasks-triggers"},
    "qtasks-kafka": {"qtasks-core", "qtasks-triggers"},
    # Surfaces: the core's public API only; never an engine, never another surface.
    "qtasks-metrics": {"qtasks-core", "qtasks-triggers"},
    "qtasks-grpc": {"qtasks-core", "qtasks-triggers"},
    "qtasks-web": {"qtasks-core", "qtasks-triggers"},
    "qtasks-otel": {"qtasks-core", "qtasks-triggers"},
    # The conformance suite: the core's public API and the task attribute.
    "qtasks-conformance": {"qtasks-core", "qtasks-triggers", "qtasks-macros"},
    # The command line composes: its `qtasks` binary connects engines by URL and serves the
    # surfaces.
    "qtasks-cli": {"qtasks-core", "qtasks-triggers"} | ENGINES | SURFACES,
    # The facade re-exports everything; tests, examples and benchmarks go through it.
    "qtasks": "*",
    "qtasks-tests": "*",
    # What the tests of every crate share (a dev dependency only).
    "qtasks-test-support": "*",
    "qtasks-examples": "*",
    # The two-process example (`examples/two-process`): what a user's workspace looks like.
    "shop-tasks": "*",
    "shop-app": "*",
    "qtasks-ui-tests": "*",
    "qtasks-bench": "*",
}

ENGINE_CLIENTS = {
    "redis", "fred", "lapin", "amqprs", "sqlx", "tokio-postgres", "postgres", "rdkafka",
    "async-nats", "deadpool-redis", "bb8-redis", "sqlx-core", "sqlx-postgres",
}
WEB_SERVERS = {"axum", "hyper", "actix-web", "warp", "tower-http", "fantoccini"}
RPC = {"tonic", "prost"}
TELEMETRY = {
    "opentelemetry", "opentelemetry_sdk", "opentelemetry-otlp", "tracing-opentelemetry",
    "prometheus-client", "prometheus", "metrics",
}
# Which engine client each engine may use (and no other).
OWN_CLIENT = {
    "qtasks-redis": {"redis"},
    "qtasks-rabbitmq": {"lapin"},
    "qtasks-postgres": {"sqlx", "sqlx-core", "sqlx-postgres"},
    "qtasks-kafka": {"rdkafka", "rdkafka-sys"},
}

# crate: the outside crates it must not reach.
DENIED_OUTSIDE = {
    "qtasks-triggers": ENGINE_CLIENTS | WEB_SERVERS | RPC | TELEMETRY,
    "qtasks-macros": ENGINE_CLIENTS | WEB_SERVERS | RPC | TELEMETRY,
    "qtasks-core": ENGINE_CLIENTS | WEB_SERVERS | RPC | TELEMETRY,
    "qtasks-conformance": ENGINE_CLIENTS | WEB_SERVERS | RPC | TELEMETRY,
    **{engine: (ENGINE_CLIENTS - OWN_CLIENT[engine]) | WEB_SERVERS | RPC for engine in ENGINES},
    **{surface: ENGINE_CLIENTS for surface in SURFACES},
}

# Where `__private` and `bench_hooks` may be named in source (paths from the root).
PRIVATE_PLACES = {
    "__private": ("qtasks-core/src/", "qtasks-macros/src/", "qtasks-conformance/src/", "qtasks/src/"),
    "bench_hooks": ("qtasks-core/src/", "qtasks/src/", "bench/"),
}


class Graph:
    """The resolved dependency graph of `cargo metadata --all-features`."""

    def __init__(self, metadata):
        self.metadata = metadata
        self.packages = {p["id"]: p for p in metadata["packages"]}
        self.nodes = {n["id"]: n for n in metadata["resolve"]["nodes"]}
        self.members = [self.packages[i] for i in metadata["workspace_members"]]

    def name(self, package_id):
        return self.packages[package_id]["name"]

    def reached(self, package_id):
        """Every package `package_id` reaches through normal and build dependencies (any target),
        each with the path it is reached by."""
        paths = {}
        stack = [(package_id, [self.name(package_id)])]
        while stack:
            current, path = stack.pop()
            for dep in self.nodes[current]["deps"]:
                kinds = {kind["kind"] for kind in dep["dep_kinds"]}
                if not kinds & {None, "build"} or dep["pkg"] in paths:
                    continue
                step = path + [self.name(dep["pkg"])]
                paths[dep["pkg"]] = step
                stack.append((dep["pkg"], step))
        return {self.name(i): path for i, path in paths.items()}


def qtasks_walls(graph):
    broken = []
    for member in graph.members:
        crate = member["name"]
        if crate not in ALLOWED_QTASKS:
            broken.append(f"{crate} has no rule in .ci/architecture.py; add one")
            continue
        allowed = ALLOWED_QTASKS[crate]
        if allowed == "*":
            continue
        for dep, path in sorted(graph.reached(member["id"]).items()):
            if dep.startswith("qtasks") and dep not in allowed:
                broken.append(
                    f"{crate} depends on {dep} (through {' -> '.join(path)}); "
                    f"allowed: {', '.join(sorted(allowed)) or 'nothing of qtasks'}"
                )
    return broken


def outside_walls(graph):
    broken = []
    for member in graph.members:
        denied = DENIED_OUTSIDE.get(member["name"], set())
        for dep, path in sorted(graph.reached(member["id"]).items()):
            if dep in denied:
                broken.append(
                    f"{member['name']} reaches {dep} (through {' -> '.join(path)}), "
                    "which it must not"
                )
    return broken


def feature_walls(graph):
    """A feature that turns on an engine crate turns on no other engine crate, itself or through
    the features it turns on (a crate's `default` bundles, and is not checked)."""
    broken = []
    for member in graph.members:
        features = member.get("features", {})

        def engines_of(feature, seen):
            found = set()
            for item in features.get(feature, []):
                if item.startswith("dep:"):
                    target = item[4:]
                elif "/" in item:
                    target = item.split("/")[0].rstrip("?")
                    if target == "qtasks-cli":
                        continue  # forwards the same feature to the command line
                elif item in features and item not in seen:
                    seen.add(item)
                    found |= engines_of(item, seen)
                    continue
                else:
                    target = item
                if target in ENGINES:
                    found.add(target)
            return found

        for feature in features:
            if feature == "default":
                continue
            engines = engines_of(feature, {feature})
            if len(engines) > 1:
                broken.append(
                    f"{member['name']}'s feature `{feature}` turns on {', '.join(sorted(engines))}: "
                    "an engine's feature turns on its own crate only"
                )
    return broken


def private_walls(root):
    broken = []
    pattern = re.compile(r"\b(__private|bench_hooks)\b")
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d not in {"target", ".git", "node_modules"}]
        for file in files:
            if not file.endswith(".rs"):
                continue
            path = os.path.join(directory, file)
            relative = os.path.relpath(path, root)
            with open(path, encoding="utf-8", errors="replace") as source:
                for number, line in enumerate(source, 1):
                    for found in pattern.findall(line):
                        if not relative.startswith(PRIVATE_PLACES[found]):
                            broken.append(
                                f"{relative}:{number} names `{found}`, which only "
                                f"{', '.join(PRIVATE_PLACES[found])} may use"
                            )
    return broken


GRAPH_BEGIN = "<!-- crate graph: generated by `python3 .ci/architecture.py --write-graph` -->"
GRAPH_END = "<!-- end of the crate graph -->"
# Shown in the graph: the library crates (tests, examples, benchmarks and trybuild cases
# depend on the facade alone).
NOT_SHOWN = {"qtasks-tests", "qtasks-test-support", "qtasks-examples", "qtasks-ui-tests", "qtasks-bench"}


def crate_graph(graph):
    """The direct dependencies among the qtasks library crates, every feature on, as a mermaid
    chart (GitHub draws it; it reads as text too)."""
    lines = ["```mermaid", "graph TD"]
    for member in sorted(graph.members, key=lambda m: m["name"]):
        if member["name"] in NOT_SHOWN:
            continue
        deps = sorted({
            graph.name(dep["pkg"])
            for dep in graph.nodes[member["id"]]["deps"]
            if graph.name(dep["pkg"]).startswith("qtasks")
            and any(kind["kind"] in (None, "build") for kind in dep["dep_kinds"])
        })
        for dep in deps:
            lines.append(f"    {member['name']} --> {dep}")
    lines.append("```")
    return "\n".join(lines)


def graph_block(graph):
    return f"{GRAPH_BEGIN}\n{crate_graph(graph)}\n{GRAPH_END}"


def graph_walls(graph, root):
    """docs/architecture.md shows the graph the crates have."""
    path = os.path.join(root, "docs", "architecture.md")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as file:
        text = file.read()
    if GRAPH_BEGIN not in text or GRAPH_END not in text:
        return ["docs/architecture.md has no crate graph between its markers"]
    shown = text[text.index(GRAPH_BEGIN):text.index(GRAPH_END) + len(GRAPH_END)]
    if shown != graph_block(graph):
        return ["docs/architecture.md's crate graph is out of date: run "
                "`python3 .ci/architecture.py --write-graph`"]
    return []


def write_graph(metadata):
    path = os.path.join(ROOT, "docs", "architecture.md")
    with open(path, encoding="utf-8") as file:
        text = file.read()
    start, end = text.index(GRAPH_BEGIN), text.index(GRAPH_END) + len(GRAPH_END)
    with open(path, "w", encoding="utf-8") as file:
        file.write(text[:start] + graph_block(Graph(metadata)) + text[end:])


def check(metadata, root):
    graph = Graph(metadata)
    return (qtasks_walls(graph) + outside_walls(graph) + feature_walls(graph)
            + private_walls(root) + graph_walls(graph, root))


def real_metadata():
    output = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--all-features"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output)


def self_test(metadata):
    """Breaks each rule on purpose; every break must be caught."""
    ids = {p["name"]: p["id"] for p in metadata["packages"]}
    empty_tree = tempfile.mkdtemp(prefix="qtasks-architecture-")

    def add_edge(meta, crate, dep, kind=None, target=None):
        node = next(n for n in meta["resolve"]["nodes"] if n["id"] == ids[crate])
        node["deps"].append({
            "name": dep.replace("-", "_"),
            "pkg": ids[dep],
            "dep_kinds": [{"kind": kind, "target": target}],
        })

    def mutated(change):
        meta = copy.deepcopy(metadata)
        change(meta)
        return meta

    def new_member(meta):
        fake = copy.deepcopy(next(p for p in meta["packages"] if p["name"] == "qtasks-redis"))
        fake["name"] = "qtasks-nats"
        fake["id"] = "path+file:///fake/qtasks-nats#0.1.0"
        meta["packages"].append(fake)
        meta["workspace_members"].append(fake["id"])
        meta["resolve"]["nodes"].append({"id": fake["id"], "deps": [], "dependencies": [], "features": []})

    def feature(meta, crate, name, items):
        package = next(p for p in meta["packages"] if p["name"] == crate)
        package["features"][name] = items

    def tree_with(relative, text):
        root = tempfile.mkdtemp(prefix="qtasks-architecture-")
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
        return root

    cases = [
        ("the core depends on an engine", mutated(lambda m: add_edge(m, "qtasks-core", "qtasks-redis")),
         empty_tree, "qtasks-core depends on qtasks-redis"),
        ("the core reaches an engine through a build dependency",
         mutated(lambda m: add_edge(m, "qtasks-core", "qtasks-rabbitmq", kind="build")),
         empty_tree, "qtasks-core depends on qtasks-rabbitmq"),
        ("the core reaches the Redis client on one platform only",
         mutated(lambda m: add_edge(m, "qtasks-core", "redis", target="cfg(windows)")),
         empty_tree, "qtasks-core reaches redis"),
        ("the core reaches axum through another crate",
         mutated(lambda m: add_edge(m, "qtasks-triggers", "axum")),
         empty_tree, "qtasks-core reaches axum"),
        ("an engine reaches another engine's client",
         mutated(lambda m: add_edge(m, "qtasks-rabbitmq", "redis")),
         empty_tree, "qtasks-rabbitmq reaches redis"),
        ("a surface depends on another surface",
         mutated(lambda m: add_edge(m, "qtasks-web", "qtasks-metrics")),
         empty_tree, "qtasks-web depends on qtasks-metrics"),
        ("a surface depends on an engine",
         mutated(lambda m: add_edge(m, "qtasks-grpc", "qtasks-redis")),
         empty_tree, "qtasks-grpc depends on qtasks-redis"),
        ("a crate with no rule", mutated(new_member), empty_tree, "qtasks-nats has no rule"),
        ("an engine feature forces another engine on",
         mutated(lambda m: feature(m, "qtasks", "rabbitmq", ["dep:qtasks-rabbitmq", "redis"])),
         empty_tree, "feature `rabbitmq` turns on qtasks-rabbitmq, qtasks-redis"),
        ("the command line's engine feature forces another engine on",
         mutated(lambda m: feature(m, "qtasks-cli", "rabbitmq", ["dep:qtasks-rabbitmq", "dep:qtasks-redis"])),
         empty_tree, "qtasks-cli's feature `rabbitmq`"),
        ("a test uses `__private`", metadata,
         tree_with("tests/sneaky.rs", "use qtasks::__private::inventory;\n"),
         "tests/sneaky.rs:1 names `__private`"),
        ("an engine uses `__private`", metadata,
         tree_with("qtasks-redis/src/lib.rs", "fn f() { qtasks_core::__private::x(); }\n"),
         "qtasks-redis/src/lib.rs:1 names `__private`"),
        ("an example uses `bench_hooks`", metadata,
         tree_with("examples/fast.rs", "use qtasks::bench_hooks;\n"),
         "examples/fast.rs:1 names `bench_hooks`"),
        ("the documented crate graph is not the crates' graph", metadata,
         tree_with("docs/architecture.md", f"{GRAPH_BEGIN}\n```mermaid\ngraph TD\n```\n{GRAPH_END}\n"),
         "crate graph is out of date"),
    ]
    failures = 0
    for name, meta, root, expected in cases:
        found = check(meta, root)
        if any(expected in line for line in found):
            print(f"architecture self-test: caught: {name}")
        else:
            failures += 1
            print(f"architecture self-test: NOT caught: {name} (expected {expected!r}; found {found})",
                  file=sys.stderr)
    return failures


def main():
    metadata = real_metadata()
    if "--write-graph" in sys.argv[1:]:
        write_graph(metadata)
        return
    if "--self-test" in sys.argv[1:]:
        failures = self_test(metadata)
        if failures:
            sys.exit(1)
        print("architecture self-test: every broken rule was caught")
        return
    broken = check(metadata, ROOT)
    for line in broken:
        print(f"architecture: {line}", file=sys.stderr)
    if broken:
        sys.exit(1)
    print("architecture: every crate depends only on what it may, features turn on one engine each, "
          "and `__private`/`bench_hooks` stay where they belong")


if __name__ == "__main__":
    main()
