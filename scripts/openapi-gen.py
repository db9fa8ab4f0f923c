#!/usr/bin/env python3
"""Cut the Kubernetes OpenAPI v2 spec down to the resources podrun's API server serves.

Usage: scripts/openapi-gen.py SWAGGER_JSON [OUT_DIR]

Reads the upstream spec (api/openapi-spec/swagger.json of a Kubernetes release), keeps the
paths of the served resources and the definitions and shared parameters they reach, and
writes OUT_DIR/v2.json (the OpenAPI v2 document) and OUT_DIR/v3.json.gz (an object that
maps each group-version path, such as "api/v1", to its OpenAPI v3 document). Both are
compact JSON with sorted keys, so a rerun on the same input gives the same bytes.
"""

import copy
import gzip
import json
import os
import sys

# group-version path -> resource -> the subresources served.
SERVED = {
    "api/v1": {
        "namespaces": [],
        "pods": ["status", "log", "exec", "attach", "portforward", "binding", "eviction"],
        "nodes": ["status"],
        "services": ["status"],
        "endpoints": [],
        "configmaps": [],
        "secrets": [],
        "serviceaccounts": [],
        "events": [],
    },
    "apis/apps/v1": {"replicasets": [], "deployments": ["status", "scale"]},
    "apis/certificates.k8s.io/v1": {"certificatesigningrequests": ["status", "approval"]},
    "apis/coordination.k8s.io/v1": {"leases": []},
    "apis/discovery.k8s.io/v1": {"endpointslices": []},
    "apis/policy/v1": {"poddisruptionbudgets": ["status"]},
}


def group_version_of(path):
    """The served group-version path a URL path belongs to, and the rest of it."""
    for gv in SERVED:
        prefix = "/" + gv + "/"
        if path.startswith(prefix):
            return gv, path[len(prefix):]
    return None, None


def served(path):
    gv, rest = group_version_of(path)
    if gv is None:
        return False
    if rest == "":
        return True  # the group-version's resource list
    segs = rest.split("/")
    if segs[0] == "watch":
        segs = segs[1:]
    if len(segs) >= 3 and segs[0] == "namespaces" and segs[1] == "{namespace}":
        segs = segs[2:]
    if not segs or segs[0] not in SERVED[gv]:
        return False
    if len(segs) <= 2:
        return True
    return len(segs) == 3 and segs[2] in SERVED[gv][segs[0]]


def refs(node, out):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                out.add(v)
            else:
                refs(v, out)
    elif isinstance(node, list):
        for v in node:
            refs(v, out)


def reachable(spec, roots):
    """Definition and parameter names reached from the JSON values in roots."""
    defs, params = set(), set()
    todo = []
    found = set()
    for r in roots:
        refs(r, found)
    todo.extend(found)
    while todo:
        ref = todo.pop()
        kind, _, name = ref[2:].partition("/")
        table = defs if kind == "definitions" else params
        if name in table:
            continue
        table.add(name)
        more = set()
        refs(spec[kind][name], more)
        todo.extend(more)
    return defs, params


def rewrite_refs(node):
    if isinstance(node, dict):
        return {
            k: (v.replace("#/definitions/", "#/components/schemas/") if k == "$ref" else rewrite_refs(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [rewrite_refs(v) for v in node]
    return node


PARAM_SCHEMA_KEYS = ("type", "format", "items", "enum", "default", "uniqueItems", "minimum", "maximum")


def v3_parameter(spec, p):
    if "$ref" in p:
        p = spec["parameters"][p["$ref"].split("/")[-1]]
    out = {k: v for k, v in p.items() if k in ("name", "in", "description", "required")}
    schema = {k: v for k, v in p.items() if k in PARAM_SCHEMA_KEYS}
    out["schema"] = schema
    return out


def v3_operation(spec, op, path_params):
    out = {k: v for k, v in op.items() if k in ("tags", "description", "operationId") or k.startswith("x-")}
    params = []
    body = None
    for p in op.get("parameters", []):
        resolved = spec["parameters"][p["$ref"].split("/")[-1]] if "$ref" in p else p
        if resolved.get("in") == "body":
            body = resolved
        else:
            params.append(v3_parameter(spec, p))
    if params:
        out["parameters"] = params
    if body is not None:
        consumes = op.get("consumes", ["*/*"])
        out["requestBody"] = {
            "content": {m: {"schema": rewrite_refs(body["schema"])} for m in consumes},
            "required": bool(body.get("required", False)),
        }
    responses = {}
    produces = op.get("produces", ["application/json"])
    for code, resp in op.get("responses", {}).items():
        r = {"description": resp.get("description", "")}
        if "schema" in resp:
            r["content"] = {m: {"schema": rewrite_refs(resp["schema"])} for m in produces}
        responses[code] = r
    out["responses"] = responses
    return out


def v3_document(spec, gv, paths):
    out_paths = {}
    for path, item in paths.items():
        new = {}
        if "parameters" in item:
            new["parameters"] = [v3_parameter(spec, p) for p in item["parameters"]]
        for method in ("get", "put", "post", "delete", "patch", "head", "options"):
            if method in item:
                new[method] = v3_operation(spec, item[method], item.get("parameters", []))
        out_paths[path] = new
    defs, _ = reachable(spec, [paths])
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": spec["info"]["version"]},
        "paths": out_paths,
        "components": {
            "schemas": {name: rewrite_refs(spec["definitions"][name]) for name in sorted(defs)},
            "securitySchemes": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header",
                                                "description": "Bearer Token authentication"}},
        },
    }


def dump(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def write_gz(path, data):
    # mtime 0 keeps the output reproducible.
    with open(path, "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", mtime=0, compresslevel=9) as gz:
            gz.write(data)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    out_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "control", "openapi")
    paths = {p: v for p, v in spec["paths"].items() if served(p)}
    defs, params = reachable(spec, [paths])
    v2 = copy.deepcopy(spec)
    v2["paths"] = paths
    v2["definitions"] = {n: spec["definitions"][n] for n in sorted(defs)}
    v2["parameters"] = {n: spec["parameters"][n] for n in sorted(params)}
    with open(os.path.join(out_dir, "v2.json"), "wb") as f:
        f.write(dump(v2))
    v3 = {}
    for gv in SERVED:
        gv_paths = {p: v for p, v in paths.items() if group_version_of(p)[0] == gv}
        v3[gv] = v3_document(spec, gv, gv_paths)
    write_gz(os.path.join(out_dir, "v3.json.gz"), dump(v3))
    print(f"{len(paths)} paths, {len(defs)} definitions, {len(params)} parameters", file=sys.stderr)


if __name__ == "__main__":
    main()
