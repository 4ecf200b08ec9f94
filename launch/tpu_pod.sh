#!/usr/bin/env bash
# Runs cu_jax on a Cloud TPU VM slice (single host or pod): create it, install the repo on every
# worker, start the same `python -m cu_jax.main` on all workers, delete it.
# `launch/tpu_pod.sh --help` explains; nothing here touches the network until a command runs.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

# Defaults; each can be set in the environment or with the flag named in usage().
TPU_NAME="${TPU_NAME:-cu-jax-pod}"
ZONE="${ZONE:-us-west4-a}"
PROJECT="${PROJECT:-}"                               # "" = gcloud's configured project
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-16}" # 16 v5e chips = 4 hosts x 4 chips
TPU_VERSION="${TPU_VERSION:-v2-alpha-tpuv5-lite}"    # TPU VM runtime (software) version
SPOT="${SPOT:-0}"
REMOTE_DIR="${REMOTE_DIR:-cu_jax}"                   # on each worker, relative to $HOME
REPO_URL="${REPO_URL:-}"                             # "" = copy this checkout; else git clone it
REPO_REF="${REPO_REF:-main}"
JAX_VERSION="${JAX_VERSION:-0.10.2}"
CONFIG="${CONFIG:-configs/vit.py}"
WORKDIR="${WORKDIR:-}"
WORKER="${WORKER:-}"                                 # "" = all (ssh without a command: 0)
DRY_RUN="${DRY_RUN:-0}"
BACKGROUND="${BACKGROUND:-0}"
ASSUME_YES="${ASSUME_YES:-0}"
ARCHIVE=""
RUN_LOG='~/cu_jax_run.log'                           # remote, for `run --background` / `logs`
RUN_PID='~/cu_jax_run.pid'

usage() {
  cat <<EOF
Usage: launch/tpu_pod.sh [options] COMMAND [-- ARGS...]

Commands
  create    create the TPU VM slice (gcloud compute tpus tpu-vm create)
  setup     put the code on every worker (a copy of this checkout, or --repo-url) and install it
            in \$HOME/$REMOTE_DIR/.venv: pip install -e . "jax[tpu]==$JAX_VERSION"
  run       run on every worker at once, with CU_JAX_DISTRIBUTED=1 (jax.distributed.initialize()):
              python -m cu_jax.main --config=CONFIG --workdir=WORKDIR ARGS...
            ARGS after -- are passed on, joined with spaces and read by the workers' bash (like
            ssh does): -- --config.train.batch_size=1024 '--config.data.data_dir=\$HOME/tfds'
            (single quotes: \$HOME expands on the worker). Workers start in \$HOME/$REMOTE_DIR.
  logs      show the last lines of a --background run's log on every worker
  stop      stop a --background run on every worker
  push      copy local files to every worker: push LOCAL... -- REMOTE_DIR (e.g. TFDS data, HF weights)
  ssh       with ARGS: run that shell command on the workers; without: a shell on worker 0
  status    describe the slice
  delete    delete the slice (asks first unless --yes)
  up        create + setup

Options (environment variable in brackets)
  --name NAME               TPU name [TPU_NAME] (default: $TPU_NAME)
  --zone ZONE               zone [ZONE] (default: $ZONE)
  --project PROJECT         GCP project [PROJECT] (default: gcloud config)
  --accelerator-type TYPE   slice type [ACCELERATOR_TYPE] (default: $ACCELERATOR_TYPE)
  --version VERSION         TPU runtime version [TPU_VERSION] (default: $TPU_VERSION;
                            v6e: v2-alpha-tpuv6e, v4: tpu-ubuntu2204-base)
  --spot                    create a Spot (preemptible) slice [SPOT=1]
  --repo-url URL            setup clones URL at --ref instead of copying this checkout [REPO_URL]
  --ref REF                 branch/tag/commit for --repo-url [REPO_REF] (default: $REPO_REF)
  --remote-dir DIR          install folder on the workers, under \$HOME [REMOTE_DIR] (default: $REMOTE_DIR)
  --jax-version V           jax[tpu] version [JAX_VERSION] (default: $JAX_VERSION)
  --config SPEC             cu_jax config [CONFIG] (default: $CONFIG, the paper run)
  --workdir DIR             run folder [WORKDIR]; required by run. It must be the same folder for
                            every worker (a shared filesystem: Filestore/NFS or a gcsfuse mount at
                            the same path on all workers), because orbax checkpoints are written by
                            all processes and read back by all of them. A single-host slice can
                            use a local path.
  --worker W                worker(s) for run/ssh/logs/push: all, 0, 1,... [WORKER] (default: all)
  --background              run: detach (nohup, log in $RUN_LOG on each worker) [BACKGROUND=1]
  --yes                     delete without asking [ASSUME_YES=1]
  --dry-run                 print the gcloud commands instead of running them [DRY_RUN=1]
  -h, --help                this text

Example (v5e pod slice, 4 hosts; data and HF weights prepared as in BUILD.md):
  launch/tpu_pod.sh --name my-pod --zone us-west4-a up
  launch/tpu_pod.sh --name my-pod push ~/tensorflow_datasets/cifar10 -- tensorflow_datasets/
  launch/tpu_pod.sh --name my-pod push ~/models/vit-base-patch16-224 -- models/
  launch/tpu_pod.sh --name my-pod --workdir /mnt/shared/vit_cifar10 --background run -- \\
      '--config.data.data_dir=\$HOME/tensorflow_datasets' \\
      '--config.model.init_from=\$HOME/models/vit-base-patch16-224'
  launch/tpu_pod.sh --name my-pod logs
  launch/tpu_pod.sh --name my-pod delete
EOF
}

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

COMMAND=""
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name) TPU_NAME="${2:?--name needs a value}"; shift 2 ;;
    --name=*) TPU_NAME="${1#*=}"; shift ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --zone=*) ZONE="${1#*=}"; shift ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --project=*) PROJECT="${1#*=}"; shift ;;
    --accelerator-type) ACCELERATOR_TYPE="${2:?--accelerator-type needs a value}"; shift 2 ;;
    --accelerator-type=*) ACCELERATOR_TYPE="${1#*=}"; shift ;;
    --version) TPU_VERSION="${2:?--version needs a value}"; shift 2 ;;
    --version=*) TPU_VERSION="${1#*=}"; shift ;;
    --spot) SPOT=1; shift ;;
    --repo-url) REPO_URL="${2:?--repo-url needs a value}"; shift 2 ;;
    --repo-url=*) REPO_URL="${1#*=}"; shift ;;
    --ref) REPO_REF="${2:?--ref needs a value}"; shift 2 ;;
    --ref=*) REPO_REF="${1#*=}"; shift ;;
    --remote-dir) REMOTE_DIR="${2:?--remote-dir needs a value}"; shift 2 ;;
    --remote-dir=*) REMOTE_DIR="${1#*=}"; shift ;;
    --jax-version) JAX_VERSION="${2:?--jax-version needs a value}"; shift 2 ;;
    --jax-version=*) JAX_VERSION="${1#*=}"; shift ;;
    --config) CONFIG="${2:?--config needs a value}"; shift 2 ;;
    --config=*) CONFIG="${1#*=}"; shift ;;
    --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
    --workdir=*) WORKDIR="${1#*=}"; shift ;;
    --worker) WORKER="${2:?--worker needs a value}"; shift 2 ;;
    --worker=*) WORKER="${1#*=}"; shift ;;
    --background) BACKGROUND=1; shift ;;
    --yes) ASSUME_YES=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; EXTRA+=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      if [[ -z "$COMMAND" ]]; then COMMAND="$1"; else EXTRA+=("$1"); fi
      shift ;;
  esac
done

[[ -n "$COMMAND" ]] || { usage >&2; exit 2; }

# --- helpers -------------------------------------------------------------------------------------

# Runs (or with --dry-run prints) a gcloud command, adding --project when one is set.
gc() {
  local cmd=(gcloud "$@")
  if [[ -n "$PROJECT" ]]; then cmd+=("--project=$PROJECT"); fi
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "${cmd[@]}"; echo
  else
    "${cmd[@]}"
  fi
}

need_gcloud() {
  [[ "$DRY_RUN" == 1 ]] || command -v gcloud >/dev/null \
    || die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
}

# Runs a bash snippet on the selected workers (default: all of them, in parallel). The snippet
# travels base64-encoded, so no quoting survives or breaks in the remote login shell.
on_workers() {
  local script="$1" worker="${2:-${WORKER:-all}}" encoded
  encoded="$(printf 'set -euo pipefail\n%s\n' "$script" | base64 | tr -d '\n')"
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# on worker(s) $worker:"; printf 'set -euo pipefail\n%s\n' "$script" | sed 's/^/#   /'
  fi
  gc compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker="$worker" \
    --command="echo $encoded | base64 -d | bash"
}

# Shell-quotes each argument into one string (for remote command lines).
quote_all() { local out="" a; for a in "$@"; do out+="$(printf '%q' "$a") "; done; printf '%s' "$out"; }

# --- commands ------------------------------------------------------------------------------------

cmd_create() {
  local args=(compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE"
              --accelerator-type="$ACCELERATOR_TYPE" --version="$TPU_VERSION")
  if [[ "$SPOT" == 1 ]]; then args+=(--spot); fi
  gc "${args[@]}"
}

cmd_setup() {
  local rdir="\$HOME/$(printf '%q' "$REMOTE_DIR")" fetch_code
  if [[ -n "$REPO_URL" ]]; then
    fetch_code="if [ -d $rdir/.git ]; then git -C $rdir fetch -q origin; else git clone -q $(printf '%q' "$REPO_URL") $rdir; fi
git -C $rdir checkout -q $(printf '%q' "$REPO_REF")
git -C $rdir pull -q --ff-only || true"
  else
    # This checkout as it is (tracked and untracked-but-not-ignored files), one archive to all.
    ARCHIVE="$(mktemp "${TMPDIR:-/tmp}/cu_jax_src.XXXXXX")"
    trap 'rm -f "$ARCHIVE"' EXIT
    (cd "$REPO_ROOT" && git ls-files -z --cached --others --exclude-standard \
       | while IFS= read -r -d '' f; do if [[ -e "$f" ]]; then printf '%s\0' "$f"; fi; done \
       | tar --null -T - -czf "$ARCHIVE")
    echo "copying $(du -h "$ARCHIVE" | cut -f1) of code from $REPO_ROOT to every worker"
    gc compute tpus tpu-vm scp "$ARCHIVE" "$TPU_NAME:cu_jax_src.tgz" --zone="$ZONE" --worker=all
    fetch_code="mkdir -p $rdir
find $rdir -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
tar -xzf \$HOME/cu_jax_src.tgz -C $rdir && rm -f \$HOME/cu_jax_src.tgz"
  fi
  # Python >= 3.11 (the runtime images ship 3.10 on Ubuntu 22.04), a venv, the package + jax[tpu].
  on_workers "$fetch_code
cd $rdir
PY=''
for c in python3.13 python3.12 python3.11 python3; do
  if command -v \$c >/dev/null && \$c -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then PY=\$c; break; fi
done
if [ -z \"\$PY\" ]; then
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv
  PY=python3.11
fi
if [ ! -x .venv/bin/python ]; then
  \$PY -m venv .venv || { sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \$PY-venv && \$PY -m venv .venv; }
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e . $(printf '%q' "jax[tpu]==$JAX_VERSION")
echo \"\$(hostname): \$(.venv/bin/python -c 'import jax, cu_jax; print(\"jax\", jax.__version__, \"ok\")')\"" all
}

cmd_run() {
  [[ -n "$WORKDIR" ]] || die "run needs --workdir (a folder shared by all workers; see --help)"
  if [[ "$WORKDIR" == gs://* ]]; then
    die "--workdir=$WORKDIR: cu_jax writes its run folder with local file APIs, so a gs:// URL is not
supported yet; mount the bucket with gcsfuse at the same path on every worker and pass that path"
  fi
  local rdir="\$HOME/$(printf '%q' "$REMOTE_DIR")" cmd
  # CONFIG and WORKDIR are quoted; ARGS are joined with spaces for the remote bash, as ssh does.
  cmd="env CU_JAX_DISTRIBUTED=1 .venv/bin/python -m cu_jax.main $(quote_all "--config=$CONFIG" "--workdir=$WORKDIR") ${EXTRA[*]-}"
  if [[ "$BACKGROUND" == 1 ]]; then
    on_workers "cd $rdir
if [ -f $RUN_PID ] && kill -0 \"\$(cat $RUN_PID)\" 2>/dev/null; then
  echo \"\$(hostname): a run is still going (pid \$(cat $RUN_PID)); use stop first\" >&2; exit 1
fi
nohup $cmd > $RUN_LOG 2>&1 < /dev/null &
echo \$! > $RUN_PID
echo \"\$(hostname): started pid \$!, log $RUN_LOG\""
  else
    on_workers "cd $rdir
$cmd"
  fi
}

cmd_logs() { on_workers "echo \"== \$(hostname)\"; tail -n 30 $RUN_LOG"; }

cmd_stop() {
  on_workers "if [ -f $RUN_PID ] && kill -0 \"\$(cat $RUN_PID)\" 2>/dev/null; then
  kill \"\$(cat $RUN_PID)\"; echo \"\$(hostname): stopped pid \$(cat $RUN_PID)\"
else echo \"\$(hostname): no run going\"; fi
rm -f $RUN_PID"
}

cmd_push() {
  # push LOCAL... -- REMOTE  (REMOTE relative to $HOME on the workers)
  [[ ${#EXTRA[@]} -ge 2 ]] || die "usage: push LOCAL... -- REMOTE_DIR"
  local dest="${EXTRA[-1]}" srcs=("${EXTRA[@]:0:${#EXTRA[@]}-1}")
  on_workers "mkdir -p $(printf '%q' "$dest")"
  gc compute tpus tpu-vm scp --recurse "${srcs[@]}" "$TPU_NAME:$dest" --zone="$ZONE" --worker="${WORKER:-all}"
}

cmd_ssh() {
  if [[ ${#EXTRA[@]} -eq 0 ]]; then
    gc compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker="${WORKER:-0}"
  else
    on_workers "${EXTRA[*]}"
  fi
}

cmd_status() { gc compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE"; }

cmd_delete() {
  local args=(compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE")
  if [[ "$ASSUME_YES" == 1 ]]; then args+=(--quiet); fi
  gc "${args[@]}"
}

case "$COMMAND" in
  create|setup|run|logs|stop|push|ssh|status|delete) need_gcloud; "cmd_$COMMAND" ;;
  up) need_gcloud; cmd_create; cmd_setup ;;
  help) usage ;;
  *) die "unknown command '$COMMAND' (see --help)" ;;
esac
