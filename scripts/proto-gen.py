#!/usr/bin/env python3
"""Cut the Kubernetes protobuf schema down to what podrun's API server decodes.

Usage: scripts/proto-gen.py API_DIR APIMACHINERY_DIR OUT_JSON

API_DIR and APIMACHINERY_DIR are checkouts of k8s.io/api and k8s.io/apimachinery at one
release (podrun uses v0.33.9, the release its OpenAPI documents come from). The script reads
each package's generated.proto (message and field numbers, types, repeated and map fields)
and its Go types (the json name of each field, and whether the Go field is a pointer, has
omitempty or is inlined), and writes one compact JSON document:

    {"kinds": {"apps/v1/Deployment": "k8s.io.api.apps.v1.Deployment", ...},
     "meta_kinds": {"DeleteOptions": "k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions", ...},
     "messages": {"k8s.io.api.apps.v1.Deployment": [[1, "metadata", TYPE, FLAGS], ...], ...}}

TYPE is a scalar (string, bytes, bool, int32, int64, double, ...), a message's full name,
"[]" + either for a repeated field, or "map:KEY:VALUE". FLAGS holds "p" (a Go pointer: a
zero value on the wire is a set value), "o" (omitempty: a zero value is no value) and "i"
(the field's members are inlined into the parent in JSON). The Go protobuf marshaller writes
non-pointer fields even when zero, so these flags are what lets a decoder give the JSON that
kube-apiserver would see. Keys are sorted, so a rerun on the same input gives the same bytes.
"""

import glob
import json
import os
import re
import sys

# Proto package -> (directory under its repository, apiVersion; None for the meta group).
API_PACKAGES = {
    "k8s.io.api.core.v1": ("core/v1", "v1"),
    "k8s.io.api.apps.v1": ("apps/v1", "apps/v1"),
    "k8s.io.api.autoscaling.v1": ("autoscaling/v1", "autoscaling/v1"),
    "k8s.io.api.certificates.v1": ("certificates/v1", "certificates.k8s.io/v1"),
    "k8s.io.api.policy.v1": ("policy/v1", "policy/v1"),
    "k8s.io.api.coordination.v1": ("coordination/v1", "coordination.k8s.io/v1"),
    "k8s.io.api.discovery.v1": ("discovery/v1", "discovery.k8s.io/v1"),
}
MACHINERY_PACKAGES = {
    "k8s.io.apimachinery.pkg.apis.meta.v1": "pkg/apis/meta/v1",
    "k8s.io.apimachinery.pkg.api.resource": "pkg/api/resource",
    "k8s.io.apimachinery.pkg.util.intstr": "pkg/util/intstr",
    "k8s.io.apimachinery.pkg.runtime": "pkg/runtime",
    "k8s.io.apimachinery.pkg.runtime.schema": "pkg/runtime/schema",
}
META = "k8s.io.apimachinery.pkg.apis.meta.v1"
# Meta kinds that arrive as request bodies of any group.
META_KINDS = ["DeleteOptions", "Status"]

FIELD = re.compile(r"^\s*(optional|repeated)\s+(\S+)\s+(\w+)\s*=\s*(\d+)\s*;")
MAP_FIELD = re.compile(r"^\s*map<\s*(\S+)\s*,\s*(\S+)\s*>\s+(\w+)\s*=\s*(\d+)\s*;")
MESSAGE = re.compile(r"^message\s+(\w+)\s*\{")
SCALARS = {"string", "bytes", "bool", "int32", "int64", "uint32", "uint64", "sint32",
           "sint64", "fixed32", "fixed64", "sfixed32", "sfixed64", "double", "float"}


def resolve(package, t):
    if t in SCALARS:
        return t
    if t.startswith("."):
        return t[1:]
    return f"{package}.{t}"


def parse_proto(path):
    """package, {message: [(number, proto_name, type)]}"""
    package = None
    messages = {}
    current = None
    depth = 0
    with open(path) as f:
        for line in f:
            line = line.split("//", 1)[0]
            if package is None:
                m = re.match(r"^package\s+([\w.]+)\s*;", line)
                if m:
                    package = m.group(1)
                continue
            if current is None:
                m = MESSAGE.match(line)
                if m:
                    current = m.group(1)
                    messages[current] = []
                    depth = 1
                continue
            depth += line.count("{") - line.count("}")
            if depth <= 0:
                current = None
                continue
            m = MAP_FIELD.match(line)
            if m:
                key, val, name, num = m.groups()
                t = f"map:{resolve(package, key)}:{resolve(package, val)}"
                messages[current].append((int(num), name, t))
                continue
            m = FIELD.match(line)
            if m:
                label, typ, name, num = m.groups()
                t = resolve(package, typ)
                if label == "repeated":
                    t = "[]" + t
                messages[current].append((int(num), name, t))
    return package, messages


STRUCT = re.compile(r"^type\s+(\w+)\s+struct\s*\{")
TAG = re.compile(r"`([^`]*)`")


def parse_go(directory):
    """{struct: {proto number: (json name, flags)}} from the package's Go files."""
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.go"))):
        base = os.path.basename(path)
        if base.endswith("_test.go") or base.startswith("zz_generated") or base.startswith("generated"):
            continue
        current = None
        with open(path) as f:
            for line in f:
                if current is None:
                    m = STRUCT.match(line)
                    if m:
                        current = m.group(1)
                        out.setdefault(current, {})
                    continue
                if line.startswith("}"):
                    current = None
                    continue
                code = line.split("//", 1)[0] if "`" not in line else line
                tag = TAG.search(code)
                if not tag:
                    continue
                tags = dict(re.findall(r'(\w+):"([^"]*)"', tag.group(1)))
                pb = tags.get("protobuf")
                if not pb:
                    continue
                parts = pb.split(",")
                try:
                    number = int(parts[1])
                except (IndexError, ValueError):
                    continue
                head = code[: tag.start()].split()
                gotype = head[1] if len(head) >= 2 else head[0] if head else ""
                js = tags.get("json", "").split(",")
                flags = ""
                if gotype.startswith("*"):
                    flags += "p"
                if "omitempty" in js[1:]:
                    flags += "o"
                if "inline" in js[1:]:
                    flags += "i"
                name = js[0] if js and js[0] not in ("", "-") else None
                if name is None and "i" not in flags:
                    m = re.search(r"name=(\w+)", pb)
                    name = m.group(1) if m else None
                out[current][number] = (name or "", flags)
    return out


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    api_dir, machinery_dir, out_path = sys.argv[1:]
    dirs = {pkg: os.path.join(api_dir, d) for pkg, (d, _) in API_PACKAGES.items()}
    dirs.update({pkg: os.path.join(machinery_dir, d) for pkg, d in MACHINERY_PACKAGES.items()})

    messages = {}
    for pkg, d in dirs.items():
        package, msgs = parse_proto(os.path.join(d, "generated.proto"))
        if package != pkg:
            sys.exit(f"{d}/generated.proto: package {package}, expected {pkg}")
        go = parse_go(d)
        for name, fields in msgs.items():
            full = f"{pkg}.{name}"
            gofields = go.get(name, {})
            rows = []
            for num, proto_name, t in fields:
                json_name, flags = gofields.get(num, (proto_name, "o"))
                rows.append([num, json_name, t, flags])
            messages[full] = rows

    kinds = {}
    for pkg, (_, api_version) in API_PACKAGES.items():
        for full, rows in messages.items():
            if full.rsplit(".", 1)[0] == pkg and any(r[1] == "metadata" for r in rows):
                kinds[f"{api_version}/{full.rsplit('.', 1)[1]}"] = full
    meta_kinds = {k: f"{META}.{k}" for k in META_KINDS}

    # Keep what the kinds reach.
    keep = set()
    todo = list(kinds.values()) + list(meta_kinds.values()) + [
        "k8s.io.apimachinery.pkg.runtime.Unknown"
    ]
    while todo:
        m = todo.pop()
        if m in keep:
            continue
        if m not in messages:
            sys.exit(f"message {m} is referenced but not defined")
        keep.add(m)
        for _, _, t, _ in messages[m]:
            for part in t.removeprefix("[]").removeprefix("map:").split(":"):
                if part not in SCALARS:
                    todo.append(part)

    doc = {
        "kinds": kinds,
        "meta_kinds": meta_kinds,
        "messages": {m: messages[m] for m in sorted(keep)},
    }
    with open(out_path, "w") as f:
        json.dump(doc, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
