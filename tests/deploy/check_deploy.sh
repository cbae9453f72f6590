#!/usr/bin/env bash
# tests/deploy/check_deploy.sh BUILD_DIR -- checks the files of deploy/ and
# docs/runbooks/ against each other, the metrics contract and the built
# programs (ctest: deploy_files).
#
#   1. deploy/prometheus/alerts.yml passes `promtool check rules` (and the
#      compose prometheus.yml `promtool check config`); without promtool,
#      a YAML parse and a structural check.
#   2. Grafana dashboards parse; every llmq_ metric that a dashboard or
#      alert expression names is in deploy/metrics.txt.
#   3. Every `llmq SUB [SUB2]`, `llmq-broker`, `llmq-worker` command a
#      runbook shows in a code block exists (`... --help` exits 0); mdb_*
#      tools named there are installed.
#   4. The YAML files (compose, Kubernetes, provisioning) parse and hold the
#      objects they should; `kubectl kustomize deploy/k8s` (when kubectl is
#      installed; offline) renders them all in the namespace; the Dockerfile
#      copies only files that exist; the systemd units pass
#      `systemd-analyze verify` when it is available. The image is never
#      built here.
#   5. Backup with mdb_copy while a broker runs, then a new broker on the
#      copy serves a job submitted before the copy, runs new jobs, and its
#      /metrics ([broker] http) has every name of deploy/metrics.txt.
#
# Loopback only; every wait polls with a deadline; processes are stopped by
# PID on exit. Exit 0 when all checks pass, 1 otherwise (each failure is
# printed as "FAIL: ...").
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 BUILD_DIR" >&2
  exit 2
fi
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLI="$BUILD/client/llmq"
BROKER="$BUILD/broker/llmq-broker"
WORKER="$BUILD/worker/llmq-worker"

FAILS=0
fail() { printf 'FAIL: %s\n' "$*"; FAILS=$((FAILS + 1)); }
ok()   { printf 'ok: %s\n' "$*"; }
skip() { printf 'skipped: %s\n' "$*"; }

HAVE_YAML=0
if python3 -c 'import yaml' 2>/dev/null; then HAVE_YAML=1; fi

# --- processes we start, stopped by PID on exit -------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/llmq-deploy.XXXXXX")
PIDS=()
# shellcheck disable=SC2317  # called from the EXIT trap and stop_pid users
stop_pid() {
  local pid=$1 n
  kill -TERM "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  for (( n = 0; n < 100; n++ )); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
# shellcheck disable=SC2317
on_exit() {
  local rc=$? i
  trap - EXIT
  for (( i = ${#PIDS[@]} - 1; i >= 0; i-- )); do
    stop_pid "${PIDS[i]}"
  done
  if [ "$rc" -eq 0 ]; then
    rm -rf -- "$TMP"
  else
    echo "logs and data kept in $TMP"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cd "$SRC"

# === 1. alert rules ============================================================
ALERTS=deploy/prometheus/alerts.yml
if command -v promtool >/dev/null 2>&1; then
  if out=$(promtool check rules "$ALERTS" 2>&1); then
    ok "promtool check rules $ALERTS"
  else
    fail "promtool check rules $ALERTS:"; printf '%s\n' "$out"
  fi
  # The compose Prometheus config, with its rule file pointed at the real one.
  sed "s#/etc/prometheus/alerts.yml#$SRC/$ALERTS#" deploy/compose/prometheus.yml >"$TMP/prometheus.yml"
  if out=$(promtool check config --syntax-only "$TMP/prometheus.yml" 2>&1); then
    ok "promtool check config deploy/compose/prometheus.yml"
  else
    fail "promtool check config deploy/compose/prometheus.yml:"; printf '%s\n' "$out"
  fi
elif [ "$HAVE_YAML" -eq 1 ]; then
  skip "promtool not installed: structural check of $ALERTS with python3-yaml"
  if ! python3 - "$ALERTS" <<'EOF'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
bad = []
for g in doc.get("groups", []):
    for r in g.get("rules", []):
        if not r.get("alert") or not r.get("expr") or "severity" not in r.get("labels", {}):
            bad.append(str(r.get("alert")))
if not doc.get("groups") or bad:
    print("rules without alert/expr/severity:", bad)
    sys.exit(1)
EOF
  then fail "$ALERTS is not a valid rules file"; fi
else
  skip "promtool not installed (and no python3 yaml): grep-level check of $ALERTS"
  if ! { grep -q '^groups:' "$ALERTS" && grep -q 'alert:' "$ALERTS" && grep -q 'expr:' "$ALERTS"; }; then
    fail "$ALERTS: no groups/alert/expr"
  fi
fi
for a in LlmqBreakerOpen LlmqQueueBackingUp LlmqQueueWaitTooLong LlmqProviderErrorRate \
         LlmqBudgetAlert LlmqNoWorkers LlmqStoreNearlyFull; do
  grep -q "alert: $a\$" "$ALERTS" || fail "$ALERTS: no alert $a"
done

# === 2. dashboards and metric names ============================================
for f in deploy/grafana/*.json; do
  if python3 -m json.tool "$f" >/dev/null 2>"$TMP/json.err"; then
    ok "$f parses"
  else
    fail "$f is not valid JSON: $(cat "$TMP/json.err")"
  fi
done
# Every expression of the dashboards (targets' expr) and alert rules (expr),
# and the KEDA query, names only metrics of deploy/metrics.txt.
if ! python3 - deploy/metrics.txt "$ALERTS" deploy/k8s/scaledobject.yaml deploy/grafana/*.json <<'EOF'
import json, re, sys
known = {l.strip() for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")}
exprs = []  # (file, expression)
def walk(o, f):
    if isinstance(o, dict):
        for k, v in o.items():
            if k in ("expr", "query") and isinstance(v, str):
                exprs.append((f, v))
            else:
                walk(v, f)
    elif isinstance(o, list):
        for v in o:
            walk(v, f)
for f in sys.argv[2:]:
    if f.endswith(".json"):
        walk(json.load(open(f)), f)
    else:
        # YAML without a parser: "expr:"/"query:" values, folded (>-) or not.
        lines = open(f).read().split("\n")
        i = 0
        while i < len(lines):
            m = re.match(r"^(\s*)(expr|query):\s*(.*)$", lines[i])
            i += 1
            if not m:
                continue
            ind, val = len(m.group(1)), m.group(3)
            if val in (">-", ">", "|", "|-"):
                val = ""
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > ind):
                    val += " " + lines[i].strip(); i += 1
            exprs.append((f, val))
bad = set()
for f, e in exprs:
    for name in re.findall(r"\bllmq_[a-z_]+", e):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in known and base not in known:
            bad.add((f, name))
for f, n in sorted(bad):
    print(f"{f}: metric {n} is not in deploy/metrics.txt")
print(f"{len(exprs)} expressions checked against {len(known)} metric names")
sys.exit(1 if bad or not exprs else 0)
EOF
then
  fail "dashboards or alerts use metrics outside deploy/metrics.txt"
else
  ok "every llmq_ metric in dashboards and alerts is in deploy/metrics.txt"
fi

# === 3. commands named in runbooks =============================================
# Lines in ``` code blocks that start (after an optional "$ ") with llmq,
# llmq-broker or llmq-worker: "llmq [global options] SUB [SUB2]" -> check
# "llmq SUB [SUB2] --help". SUB2 is taken when it is a lower-case word (an
# ID, a DATE, an option is not).
python3 - docs/runbooks/*.md >"$TMP/commands" <<'EOF'
import re, sys
seen = []
for f in sys.argv[1:]:
    inblock = False
    for line in open(f):
        s = line.strip()
        if s.startswith("```"):
            inblock = not inblock
            continue
        if not inblock:
            continue
        s = re.sub(r"^\$\s+", "", s)
        w = s.split()
        if not w:
            continue
        if w[0] in ("llmq-broker", "llmq-worker"):
            cmd = w[0]
        elif w[0] == "llmq":
            i, words = 1, []
            while i < len(w) and w[i] in ("--broker", "--timeout"):
                i += 2
            while i < len(w) and len(words) < 2 and re.fullmatch(r"[a-z][a-z-]*", w[i]):
                words.append(w[i]); i += 1
            cmd = " ".join(["llmq"] + words)
        elif re.match(r"mdb_[a-z]+$", w[0]):
            cmd = w[0]
        else:
            continue
        if cmd not in seen:
            seen.append(cmd)
print("\n".join(seen))
EOF
ncmd=0
while IFS= read -r cmd; do
  [ -n "$cmd" ] || continue
  ncmd=$((ncmd + 1))
  read -r -a words <<<"$cmd"
  case "${words[0]}" in
    llmq)        bin=$CLI ;;
    llmq-broker) bin=$BROKER ;;
    llmq-worker) bin=$WORKER ;;
    mdb_*)
      command -v "${words[0]}" >/dev/null 2>&1 || fail "runbooks name ${words[0]}, which is not installed (lmdb-utils)"
      continue ;;
  esac
  if ! "$bin" "${words[@]:1}" --help >/dev/null 2>"$TMP/help.err"; then
    fail "runbooks name '$cmd', but '$cmd --help' fails: $(head -1 "$TMP/help.err")"
  fi
done <"$TMP/commands"
[ "$ncmd" -gt 5 ] || fail "found only $ncmd commands in docs/runbooks/*.md"
ok "$ncmd distinct commands of docs/runbooks checked: $(paste -sd, "$TMP/commands")"

# === 4. YAML, Dockerfile, systemd ==============================================
if [ "$HAVE_YAML" -eq 1 ]; then
  if python3 - <<'EOF'
import glob, sys, yaml, os
def load(f):
    return [d for d in yaml.safe_load_all(open(f)) if d is not None]
bad = []
def need(cond, what):
    if not cond:
        bad.append(what)
files = sorted(glob.glob("deploy/k8s/*.yaml") + glob.glob("deploy/compose/*.y*ml")
               + glob.glob("deploy/compose/grafana/provisioning/*/*.yaml") + ["deploy/prometheus/alerts.yml"])
docs = {}
for f in files:
    try:
        docs[f] = load(f)
    except yaml.YAMLError as e:
        bad.append(f"{f}: {e}")
kinds = {}
for f in glob.glob("deploy/k8s/*.yaml"):
    for d in docs.get(f, []):
        kinds.setdefault(d.get("kind"), []).append((f, d))
for k in ("StatefulSet", "Service", "Deployment", "ScaledObject", "PodDisruptionBudget", "ConfigMap"):
    need(k in kinds, f"deploy/k8s: no {k}")
for f, d in kinds.get("StatefulSet", []):
    need(d["spec"].get("replicas") == 1, f"{f}: the broker must have exactly 1 replica")
    need(d["spec"].get("volumeClaimTemplates"), f"{f}: no volumeClaimTemplates")
for f, d in kinds.get("Service", []):
    need(d["spec"].get("clusterIP") == "None", f"{f}: the broker Service is not headless")
for f, d in kinds.get("ConfigMap", []):
    conf = d.get("data", {}).get("llmq.conf", "")
    need("[broker]" in conf and "http = " in conf, f"{f}: llmq.conf without [broker] http")
k = os.path.exists("deploy/k8s/kustomization.yaml") and docs.get("deploy/k8s/kustomization.yaml")
if k:
    for r in k[0].get("resources", []):
        need(os.path.exists("deploy/k8s/" + r), f"kustomization.yaml: no file {r}")
c = docs.get("deploy/compose/compose.yaml", [{}])[0]
svc = c.get("services", {})
for s in ("broker", "worker", "mock", "prometheus", "grafana"):
    need(s in svc, f"compose.yaml: no service {s}")
need(svc.get("worker", {}).get("deploy", {}).get("replicas") == 3, "compose.yaml: workers are not 3")
for name, s in svc.items():
    for v in s.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("."):
            need(os.path.exists(os.path.join("deploy/compose", src)), f"compose.yaml: {name} mounts missing {src}")
    b = s.get("build")
    if b:
        ctx = os.path.join("deploy/compose", b["context"])
        need(os.path.exists(os.path.join(ctx, b["dockerfile"])), f"compose.yaml: no {b['dockerfile']}")
for m in bad:
    print(m)
print(f"{len(files)} YAML files parsed")
sys.exit(1 if bad else 0)
EOF
  then ok "compose, Kubernetes and provisioning YAML parse and hold their objects"
  else fail "deploy YAML files"; fi
else
  skip "python3 yaml module not installed: YAML files not parsed"
fi

# The kustomization as kubectl renders it (offline: `kubectl kustomize` needs
# no cluster): it builds, holds every kind above, and each namespaced object
# lands in the kustomization's namespace.
if command -v kubectl >/dev/null 2>&1; then
  if timeout 60 kubectl kustomize deploy/k8s >"$TMP/kustomize.yaml" 2>"$TMP/kustomize.err"; then
    if [ "$HAVE_YAML" -eq 1 ]; then
      if out=$(python3 - "$TMP/kustomize.yaml" deploy/k8s/kustomization.yaml 2>&1 <<'EOF'
import sys, yaml
objs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]
want_ns = (yaml.safe_load(open(sys.argv[2])) or {}).get("namespace")
bad = []
def need(cond, what):
    if not cond:
        bad.append(what)
kinds = {}
for d in objs:
    kinds.setdefault(d.get("kind"), []).append(d)
for k in ("StatefulSet", "Service", "Deployment", "ScaledObject", "PodDisruptionBudget", "ConfigMap"):
    need(k in kinds, f"no {k}")
for d in kinds.get("StatefulSet", []):
    need(d.get("spec", {}).get("replicas") == 1, "the broker StatefulSet has not exactly 1 replica")
for d in kinds.get("Service", []):
    need(d.get("spec", {}).get("clusterIP") == "None", "the broker Service is not headless")
# Every namespaced object has a namespace, the same for all (the
# kustomization's when it sets one); a Namespace object (cluster-scoped)
# is that namespace.
spaces = set()
for d in objs:
    md = d.get("metadata", {}) or {}
    if d.get("kind") != "Namespace":
        ns = md.get("namespace")
        need(ns, f"{d.get('kind')}/{md.get('name')}: no namespace")
        need(not want_ns or ns == want_ns,
             f"{d.get('kind')}/{md.get('name')}: namespace {ns!r}, expected {want_ns!r}")
        spaces.add(ns)
need(len(spaces) == 1, f"objects in namespaces {sorted(map(str, spaces))}, expected one")
for d in kinds.get("Namespace", []):
    name = (d.get("metadata", {}) or {}).get("name")
    need(name in spaces, f"Namespace/{name}: no object is in it")
for m in bad:
    print(m)
print(f"{len(objs)} objects, namespace {', '.join(sorted(map(str, spaces)))}")
sys.exit(1 if bad else 0)
EOF
      ); then
        ok "kubectl kustomize deploy/k8s: $out"
      else
        fail "kubectl kustomize deploy/k8s renders, but:"; printf '%s\n' "$out"
      fi
    else
      # No YAML parser: every required kind appears, the Service is headless,
      # and there are as many "  namespace:" lines as namespaced objects.
      before=$FAILS
      for k in StatefulSet Service Deployment ScaledObject PodDisruptionBudget ConfigMap; do
        grep -q "^kind: $k\$" "$TMP/kustomize.yaml" || fail "kubectl kustomize deploy/k8s: no $k"
      done
      grep -q '^  clusterIP: None$' "$TMP/kustomize.yaml" \
        || fail "kubectl kustomize deploy/k8s: the broker Service is not headless"
      nobj=$(grep -c '^kind: ' "$TMP/kustomize.yaml" || true)
      nns=$(grep -c '^kind: Namespace$' "$TMP/kustomize.yaml" || true)
      nset=$(grep -c '^  namespace: ' "$TMP/kustomize.yaml" || true)
      [ "$((nobj - nns))" -eq "$nset" ] \
        || fail "kubectl kustomize deploy/k8s: $((nobj - nns)) namespaced objects, $nset with a namespace"
      [ "$FAILS" -ne "$before" ] \
        || ok "kubectl kustomize deploy/k8s renders $nobj objects (grep-level check: no python3 yaml)"
    fi
  else
    fail "kubectl kustomize deploy/k8s failed:"; head -20 "$TMP/kustomize.err"
  fi
else
  echo "check_deploy: kubectl not found, kustomize render skipped"
fi

# The image is not built here; say why when docker is installed but idle.
if command -v docker >/dev/null 2>&1 && ! timeout 20 docker info >/dev/null 2>&1; then
  echo "check_deploy: docker daemon not answering, image build skipped"
fi

# Dockerfile: every COPY source of the build context exists; every file
# taken from the build stage (/src/build/...) is built in BUILD_DIR too.
DF=deploy/container/Dockerfile
ncopy=0
while read -r -a w; do
  [ "${w[0]:-}" = COPY ] || continue
  ncopy=$((ncopy + 1))
  args=("${w[@]:1}")
  from=""
  while [ "${#args[@]}" -gt 0 ] && [[ ${args[0]} == --* ]]; do
    case ${args[0]} in --from=*) from=${args[0]#--from=} ;; esac
    args=("${args[@]:1}")
  done
  n=${#args[@]}
  for src in "${args[@]:0:n-1}"; do
    if [ -n "$from" ]; then
      case $src in
        /src/build/*) [ -e "$BUILD/${src#/src/build/}" ] || fail "$DF: copies $src from stage $from, but $BUILD/${src#/src/build/} is not built" ;;
        *) fail "$DF: copies $src from stage $from (expected /src/build/...)" ;;
      esac
    else
      [ -e "$SRC/$src" ] || fail "$DF: COPY $src: no such file in the repository"
    fi
  done
done <"$DF"
grep -q '^FROM debian:12 AS build' "$DF" || fail "$DF: no debian:12 build stage"
grep -q 'install-deps.sh' "$DF" || fail "$DF: does not use deploy/install-deps.sh"
if [ "$ncopy" -gt 3 ]; then ok "$DF: $ncopy COPY lines checked"; else fail "$DF: only $ncopy COPY lines"; fi

# systemd units: verify offline with the binaries of BUILD_DIR.
if command -v systemd-analyze >/dev/null 2>&1; then
  mkdir -p "$TMP/units"
  sed "s#/usr/local/bin/#$BUILD/broker/#" deploy/systemd/llmq-broker.service >"$TMP/units/llmq-broker.service"
  sed "s#/usr/local/bin/#$BUILD/worker/#" deploy/systemd/llmq-worker@.service >"$TMP/units/llmq-worker@.service"
  cp "$TMP/units/llmq-worker@.service" "$TMP/units/llmq-worker@1.service"
  if out=$(cd "$TMP/units" && systemd-analyze verify --man=no ./llmq-broker.service ./llmq-worker@1.service 2>&1) \
     && [ -z "$out" ]; then
    ok "systemd-analyze verify llmq-broker.service llmq-worker@1.service"
  else
    fail "systemd-analyze verify:"; printf '%s\n' "$out"
  fi
else
  skip "systemd-analyze not installed: units not verified"
fi
for opt in NoNewPrivileges=yes ProtectSystem=strict CapabilityBoundingSet= SystemCallFilter=@system-service; do
  for u in deploy/systemd/llmq-broker.service deploy/systemd/llmq-worker@.service; do
    grep -q "^$opt" "$u" || fail "$u: no $opt"
  done
done

# === 5. backup while running, restore, serve ===================================
for bin in "$CLI" "$BROKER" "$WORKER"; do
  [ -x "$bin" ] || { fail "missing $bin: build first"; exit 1; }
done
if ! command -v mdb_copy >/dev/null 2>&1; then
  fail "mdb_copy not installed (lmdb-utils; deploy/install-deps.sh installs it)"
  exit 1
fi

# start_broker NAME DATA_DIR [HTTP_PORT]: a broker on ephemeral loopback
# ports (and its HTTP side on 127.0.0.1:HTTP_PORT if given); sets
# BROKER_PID, FE (client endpoint) and BE (worker endpoint) from its ready file.
start_broker() {
  local name=$1 data=$2 ready="$TMP/$1.ready" n http=""
  [ -z "${3:-}" ] || http="http = 127.0.0.1:$3"
  cat >"$TMP/$name.conf" <<EOF
[broker]
frontend = tcp://127.0.0.1:*
backend = tcp://127.0.0.1:*
data_dir = $data
sync = on
heartbeat = 200ms
$http

[deployment echo]
provider = echo

[group echo]
deployments = echo
EOF
  rm -f -- "$ready"
  "$BROKER" -c "$TMP/$name.conf" --ready-file "$ready" >"$TMP/$name.log" 2>&1 &
  BROKER_PID=$!
  PIDS+=("$BROKER_PID")
  for (( n = 0; n < 100; n++ )); do         # at most 10 s
    [ -s "$ready" ] && [ "$(wc -l <"$ready")" -ge 2 ] && break
    kill -0 "$BROKER_PID" 2>/dev/null || { fail "$name exited at start: $(tail -3 "$TMP/$name.log")"; exit 1; }
    sleep 0.1
  done
  [ -s "$ready" ] || { fail "$name wrote no ready file within 10 s"; exit 1; }
  FE=$(sed -n 1p "$ready")
  BE=$(sed -n 2p "$ready")
  case "$FE$BE" in
    tcp://127.0.0.1:*tcp://127.0.0.1:*) ;;
    *) fail "$name: unexpected endpoints '$FE' '$BE'"; exit 1 ;;
  esac
}
# start_worker NAME: a worker for the broker at $BE; sets WORKER_PID.
start_worker() {
  "$WORKER" -c "$TMP/$1.conf" --broker "$BE" --slots 4 >"$TMP/$1-worker.log" 2>&1 &
  WORKER_PID=$!
  PIDS+=("$WORKER_PID")
}
# job_state ID: the state line of `llmq status ID`.
job_state() {
  "$CLI" --broker "$FE" --timeout 5s status "$1" 2>/dev/null | sed -n 's/^state: *//p'
}

start_broker broker1 "$TMP/data"
start_worker broker1
ok "broker (pid $BROKER_PID) on $FE, worker on $BE"

# 20 echo jobs; submit --wait also proves a worker serves them.
for (( i = 1; i <= 20; i++ )); do
  out=$("$CLI" --broker "$FE" --timeout 20s submit -m echo --wait "hi $i" 2>&1) \
    || { fail "job $i: submit --wait failed: $out"; exit 1; }
  [ "$out" = "echo: hi $i" ] || { fail "job $i answered '$out'"; exit 1; }
done
# One more whose id we keep, polled until done (at most 10 s).
ID=$("$CLI" --broker "$FE" --timeout 5s submit -m echo "before backup")
[[ $ID =~ ^[0-9]+$ ]] || { fail "submit printed '$ID', not an id"; exit 1; }
for (( n = 0; n < 100; n++ )); do
  [ "$(job_state "$ID")" = "done" ] && break
  sleep 0.1
done
[ "$(job_state "$ID")" = "done" ] || { fail "job $ID did not finish within 10 s"; exit 1; }
ok "21 jobs done on the first broker (kept id $ID)"

# Back up while the broker runs (and is still alive afterwards).
mkdir -p "$TMP/backup"
if ! out=$(mdb_copy "$TMP/data" "$TMP/backup" 2>&1); then
  fail "mdb_copy of a running broker's store: $out"; exit 1
fi
kill -0 "$BROKER_PID" 2>/dev/null || { fail "the broker died during mdb_copy"; exit 1; }
"$CLI" --broker "$FE" --timeout 5s stats >/dev/null || { fail "the broker stopped answering after mdb_copy"; exit 1; }
[ -s "$TMP/backup/data.mdb" ] || { fail "mdb_copy wrote no data.mdb"; exit 1; }
ok "mdb_copy of the running broker's store: $(du -k "$TMP/backup/data.mdb" | cut -f1) KiB"

# Stop the first broker and its worker; a second broker opens the copy.
stop_pid "$WORKER_PID"
stop_pid "$BROKER_PID"
# The second broker also serves /metrics: a free loopback port, found now.
HTTP_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start_broker broker2 "$TMP/backup" "$HTTP_PORT"
ok "second broker (pid $BROKER_PID) on the copy, $FE"
state=$(job_state "$ID")
content=$("$CLI" --broker "$FE" --timeout 5s status "$ID" 2>/dev/null | tail -1)
if [ "$state" = "done" ] && [ "$content" = "echo: before backup" ]; then
  ok "job $ID is done on the restored broker, content '$content'"
else
  fail "job $ID on the restored broker: state '$state', content '$content'"
fi
# It serves new work too, with ids after the restored ones.
start_worker broker2
out=$("$CLI" --broker "$FE" --timeout 20s submit -m echo --wait "after restore" 2>&1) || true
if [ "$out" = "echo: after restore" ]; then
  ok "the restored broker runs new jobs"
else
  fail "new job on the restored broker answered '$out'"
fi
ID2=$("$CLI" --broker "$FE" --timeout 5s submit -m echo "id check" 2>/dev/null || echo 0)
if [[ $ID2 =~ ^[0-9]+$ ]] && [ "$ID2" -gt "$ID" ]; then
  ok "new ids continue after the restored ones ($ID2 > $ID)"
else
  fail "new job id '$ID2' is not after $ID"
fi

# The metrics contract: every name of deploy/metrics.txt is on /metrics,
# declared by its "# TYPE" line (a family whose labels come from live state,
# such as llmq_queue_tenant_depth with nothing queued, has no sample yet).
# (Polled: the HTTP side may start listening just after the ready file.)
for (( n = 0; n < 50; n++ )); do
  python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())' \
    "http://127.0.0.1:$HTTP_PORT/metrics" >"$TMP/metrics.out" 2>&1 && break
  sleep 0.1
done
if grep -q '^llmq_' "$TMP/metrics.out"; then
  missing=$(grep '^llmq_' deploy/metrics.txt | while read -r m; do
              grep -Eq "^# TYPE ${m} " "$TMP/metrics.out" || printf '%s ' "$m"
            done)
  if [ -z "$missing" ]; then
    ok "/metrics of the restored broker has every name of deploy/metrics.txt"
  else
    fail "/metrics lacks: $missing"
  fi
else
  fail "no llmq_ metrics from http://127.0.0.1:$HTTP_PORT/metrics: $(head -3 "$TMP/metrics.out")"
fi

if [ "$FAILS" -ne 0 ]; then
  echo "check_deploy: $FAILS check(s) failed"
  exit 1
fi
echo "check_deploy: all checks passed"
