#!/usr/bin/env bash
# Deploys the service to Cloud Run (gen2) with gcloud alone. Idempotent: run it again to roll out
# a new build or a changed setting; what already exists is left as it is.
#
#   infra/gcloud/deploy.sh PROJECT_ID=my-project [NAME=VALUE ...]
#
# Settings are NAME=VALUE arguments or environment variables of the same name (arguments win):
#   PROJECT_ID             project to deploy to (default: gcloud's configured project)
#   REGION                 Cloud Run and Artifact Registry region        (us-central1)
#   REPOSITORY             Artifact Registry Docker repository           (python-exec)
#   SERVICE                Cloud Run service name, also the image name   (python-exec)
#   RUNTIME_SA             account id of the runtime service account     (python-exec-runtime)
#   TAG                    image tag (default: the git commit, or manual-<UTC time> if the tree is dirty)
#   BUILD                  cloudbuild | docker | none                    (cloudbuild)
#   ALLOW_UNAUTHENTICATED  true lets anyone on the internet invoke it    (false)
#   INVOKERS               comma-separated IAM members granted roles/run.invoker, e.g.
#                          user:you@example.com,serviceAccount:caller@p.iam.gserviceaccount.com
#   INGRESS                all | internal | internal-and-cloud-load-balancing (all)
#   SANDBOX_MODE           auto | nsjail | seccomp                       (auto)
#   CPU, MEMORY_MIB        instance size                                 (2, 2048)
#   MAX_CONCURRENT_RUNS    admission limit = Cloud Run concurrency       (2)
#   SCRIPT_TIMEOUT_MS, SCRIPT_MEMORY_MB, MAX_QUEUE, MAX_QUEUE_WAIT_MS, SHUTDOWN_GRACE_MS,
#   REQUEST_MAX_BYTES      service limits                     (10000, 512, 4, 10000, 8000, 1048576)
#   SERVICE_OVERHEAD_MIB   memory kept for the service beside the runs   (512)
#   TIMEOUT_MARGIN_S       request timeout = script + queue wait + this  (30)
#   MIN_INSTANCES, MAX_INSTANCES                                         (0, 10)
#
# The defaults are cloudbuild.yaml's; infra/README.md explains each limit. The runtime service
# account is created with no IAM roles and this script refuses to deploy if it has any.
set -euo pipefail

die() { echo "deploy.sh: $*" >&2; exit 1; }
log() { echo "deploy.sh: $*" >&2; }

settings=(PROJECT_ID REGION REPOSITORY SERVICE RUNTIME_SA TAG BUILD ALLOW_UNAUTHENTICATED INVOKERS
  INGRESS SANDBOX_MODE CPU MEMORY_MIB MAX_CONCURRENT_RUNS SCRIPT_TIMEOUT_MS SCRIPT_MEMORY_MB
  MAX_QUEUE MAX_QUEUE_WAIT_MS SHUTDOWN_GRACE_MS REQUEST_MAX_BYTES SERVICE_OVERHEAD_MIB
  TIMEOUT_MARGIN_S MIN_INSTANCES MAX_INSTANCES)

for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *=*)
      name="${arg%%=*}"
      known=false
      for s in "${settings[@]}"; do [ "$s" = "$name" ] && known=true; done
      [ "$known" = true ] || die "unknown setting '$name' (see --help)"
      printf -v "$name" '%s' "${arg#*=}"
      ;;
    *) die "arguments are NAME=VALUE settings (see --help), got '$arg'" ;;
  esac
done

command -v gcloud >/dev/null || die "gcloud is not installed (https://cloud.google.com/sdk/docs/install)"
cd "$(dirname "$0")/../.."

PROJECT_ID="${PROJECT_ID:-$(gcloud config get-value project 2>/dev/null || true)}"
[ -n "$PROJECT_ID" ] || die "no project: pass PROJECT_ID=... or run 'gcloud config set project ...'"
REGION="${REGION:-us-central1}"
REPOSITORY="${REPOSITORY:-python-exec}"
SERVICE="${SERVICE:-python-exec}"
RUNTIME_SA="${RUNTIME_SA:-python-exec-runtime}"
BUILD="${BUILD:-cloudbuild}"
ALLOW_UNAUTHENTICATED="${ALLOW_UNAUTHENTICATED:-false}"
INVOKERS="${INVOKERS:-}"
INGRESS="${INGRESS:-all}"
SANDBOX_MODE="${SANDBOX_MODE:-auto}"
CPU="${CPU:-2}"
MEMORY_MIB="${MEMORY_MIB:-2048}"
MAX_CONCURRENT_RUNS="${MAX_CONCURRENT_RUNS:-2}"
SCRIPT_TIMEOUT_MS="${SCRIPT_TIMEOUT_MS:-10000}"
SCRIPT_MEMORY_MB="${SCRIPT_MEMORY_MB:-512}"
MAX_QUEUE="${MAX_QUEUE:-4}"
MAX_QUEUE_WAIT_MS="${MAX_QUEUE_WAIT_MS:-10000}"
SHUTDOWN_GRACE_MS="${SHUTDOWN_GRACE_MS:-8000}"
REQUEST_MAX_BYTES="${REQUEST_MAX_BYTES:-1048576}"
SERVICE_OVERHEAD_MIB="${SERVICE_OVERHEAD_MIB:-512}"
TIMEOUT_MARGIN_S="${TIMEOUT_MARGIN_S:-30}"
MIN_INSTANCES="${MIN_INSTANCES:-0}"
MAX_INSTANCES="${MAX_INSTANCES:-10}"
if [ -z "${TAG:-}" ]; then
  if git rev-parse --verify -q HEAD >/dev/null 2>&1 && [ -z "$(git status --porcelain 2>/dev/null)" ]; then
    TAG="$(git rev-parse --short=12 HEAD)"
  else
    TAG="manual-$(date -u +%Y%m%d-%H%M%S)"
  fi
fi

# ---- validation (the same checks as cloudbuild.yaml's deploy step) ------------------------------
whole() { case "$2" in ''|*[!0-9]*) die "$1 must be a whole number, got '$2'" ;; esac; }
for name in CPU MEMORY_MIB MAX_CONCURRENT_RUNS SCRIPT_TIMEOUT_MS SCRIPT_MEMORY_MB MAX_QUEUE \
  MAX_QUEUE_WAIT_MS SHUTDOWN_GRACE_MS REQUEST_MAX_BYTES SERVICE_OVERHEAD_MIB TIMEOUT_MARGIN_S \
  MIN_INSTANCES MAX_INSTANCES; do
  whole "$name" "${!name}"
done
[[ "$PROJECT_ID" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] || die "PROJECT_ID '$PROJECT_ID' is not a project id"
[[ "$SERVICE" =~ ^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$ ]] || die "SERVICE must be a lowercase DNS label of at most 49 characters"
[[ "$RUNTIME_SA" =~ ^[a-z][-a-z0-9]{4,28}[a-z0-9]$ ]] || die "RUNTIME_SA must be a 6-30 character account id"
[[ "$REPOSITORY" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "REPOSITORY must be lowercase letters, digits and hyphens"
[[ "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "TAG '$TAG' is not a valid image tag"
case "$BUILD" in cloudbuild|docker|none) ;; *) die "BUILD must be cloudbuild, docker or none" ;; esac
case "$SANDBOX_MODE" in auto|nsjail|seccomp) ;; *) die "SANDBOX_MODE must be auto, nsjail or seccomp" ;; esac
case "$INGRESS" in all|internal|internal-and-cloud-load-balancing) ;; *) die "INGRESS is not a Cloud Run ingress setting" ;; esac
case "$ALLOW_UNAUTHENTICATED" in
  true) auth_flag=--allow-unauthenticated ;;
  false) auth_flag=--no-allow-unauthenticated ;;
  *) die "ALLOW_UNAUTHENTICATED must be true or false" ;;
esac
if [ "$MAX_CONCURRENT_RUNS" -lt 1 ] || [ "$MAX_CONCURRENT_RUNS" -gt 1000 ]; then
  die "MAX_CONCURRENT_RUNS must be 1..1000 (Cloud Run's concurrency range)"
fi
if [ "$MIN_INSTANCES" -gt "$MAX_INSTANCES" ]; then die "MIN_INSTANCES exceeds MAX_INSTANCES"; fi
need_mib=$((MAX_CONCURRENT_RUNS * SCRIPT_MEMORY_MB + SERVICE_OVERHEAD_MIB))
if [ "$need_mib" -gt "$MEMORY_MIB" ]; then
  die "MAX_CONCURRENT_RUNS x SCRIPT_MEMORY_MB + SERVICE_OVERHEAD_MIB = $need_mib MiB exceeds MEMORY_MIB=$MEMORY_MIB"
fi
if [ "$TIMEOUT_MARGIN_S" -lt 1 ]; then die "TIMEOUT_MARGIN_S must be at least 1"; fi
timeout_s=$(( (SCRIPT_TIMEOUT_MS + MAX_QUEUE_WAIT_MS + 999) / 1000 + TIMEOUT_MARGIN_S ))
if [ "$timeout_s" -gt 3600 ]; then die "request timeout $timeout_s s exceeds Cloud Run's 3600 s"; fi
if [ "$SHUTDOWN_GRACE_MS" -ge 10000 ]; then die "SHUTDOWN_GRACE_MS must be below 10000 (Cloud Run kills 10 s after SIGTERM)"; fi
invokers=()
if [ -n "$INVOKERS" ]; then
  IFS=',' read -r -a invokers <<<"$INVOKERS"
fi
for member in ${invokers[@]+"${invokers[@]}"}; do
  case "$member" in
    allUsers|allAuthenticatedUsers) die "INVOKERS may not contain $member; use ALLOW_UNAUTHENTICATED=true to make the service public" ;;
    user:?*|serviceAccount:?*|group:?*|domain:?*|principal:?*|principalSet:?*) ;;
    *) die "INVOKERS entry '$member' is not an IAM member (user:, serviceAccount:, group:, domain:, ...)" ;;
  esac
done

sa_email="$RUNTIME_SA@$PROJECT_ID.iam.gserviceaccount.com"
image="$REGION-docker.pkg.dev/$PROJECT_ID/$REPOSITORY/$SERVICE:$TAG"
log "project $PROJECT_ID, region $REGION, service $SERVICE, image $image"

# ---- APIs, repository, runtime service account ---------------------------------------------------
log "enabling APIs (no-op when already enabled)"
gcloud services enable run.googleapis.com artifactregistry.googleapis.com cloudbuild.googleapis.com \
  iam.googleapis.com --project="$PROJECT_ID"

if gcloud artifacts repositories describe "$REPOSITORY" --project="$PROJECT_ID" --location="$REGION" >/dev/null 2>&1; then
  log "Artifact Registry repository $REPOSITORY exists"
else
  log "creating Artifact Registry repository $REPOSITORY"
  gcloud artifacts repositories create "$REPOSITORY" --project="$PROJECT_ID" --location="$REGION" \
    --repository-format=docker --description="Images of the $SERVICE Cloud Run service"
fi

if gcloud iam service-accounts describe "$sa_email" --project="$PROJECT_ID" >/dev/null 2>&1; then
  log "runtime service account $sa_email exists"
else
  log "creating runtime service account $sa_email (it is granted no roles)"
  gcloud iam service-accounts create "$RUNTIME_SA" --project="$PROJECT_ID" \
    --display-name="$SERVICE runtime (no roles)" \
    --description="Identity of the $SERVICE Cloud Run service. Deliberately holds no IAM roles: a token stolen from the metadata server grants nothing."
fi
# No roles are granted, and none may have been granted by hand since: the service needs none.
roles="$(gcloud projects get-iam-policy "$PROJECT_ID" --flatten='bindings[].members' \
  --filter="bindings.members:serviceAccount:$sa_email" --format='value(bindings.role)')"
if [ -n "$roles" ]; then
  die "$sa_email holds project roles ($(echo "$roles" | tr '\n' ' ')); the runtime account must hold none. Remove them with: gcloud projects remove-iam-policy-binding $PROJECT_ID --member=serviceAccount:$sa_email --role=ROLE"
fi

# ---- build and push ------------------------------------------------------------------------------
case "$BUILD" in
  cloudbuild)
    log "building $image with Cloud Build (cloudbuild.yaml, deploy step off)"
    gcloud builds submit --project="$PROJECT_ID" --config=cloudbuild.yaml \
      --ignore-file=infra/gcloud/gcloudignore \
      --substitutions="_REGION=$REGION,_REPOSITORY=$REPOSITORY,_SERVICE=$SERVICE,_TAG=$TAG,_DEPLOY=false" .
    ;;
  docker)
    command -v docker >/dev/null || die "BUILD=docker needs docker"
    log "building $image with the local docker"
    docker build -f sandbox-image/Dockerfile -t "$image" .
    gcloud auth configure-docker "$REGION-docker.pkg.dev" --quiet
    docker push "$image"
    ;;
  none)
    log "BUILD=none: deploying the existing image $image"
    ;;
esac

# ---- deploy (the same flags as cloudbuild.yaml's deploy step) -------------------------------------
log "deploying $SERVICE"
gcloud run deploy "$SERVICE" \
  --quiet \
  --project="$PROJECT_ID" \
  --region="$REGION" \
  --image="$image" \
  --execution-environment=gen2 \
  --service-account="$sa_email" \
  --concurrency="$MAX_CONCURRENT_RUNS" \
  --cpu="$CPU" \
  --memory="$MEMORY_MIB"Mi \
  --timeout="$timeout_s" \
  --min-instances="$MIN_INSTANCES" \
  --max-instances="$MAX_INSTANCES" \
  --cpu-throttling \
  --cpu-boost \
  --port=8080 \
  --ingress="$INGRESS" \
  --startup-probe="httpGet.path=/health?deep=1,httpGet.port=8080,initialDelaySeconds=0,periodSeconds=10,timeoutSeconds=9,failureThreshold=12" \
  --set-env-vars="SANDBOX_MODE=$SANDBOX_MODE,MAX_CONCURRENT_RUNS=$MAX_CONCURRENT_RUNS,SCRIPT_TIMEOUT_MS=$SCRIPT_TIMEOUT_MS,SCRIPT_MEMORY_MB=$SCRIPT_MEMORY_MB,MAX_QUEUE=$MAX_QUEUE,MAX_QUEUE_WAIT_MS=$MAX_QUEUE_WAIT_MS,SHUTDOWN_GRACE_MS=$SHUTDOWN_GRACE_MS,REQUEST_MAX_BYTES=$REQUEST_MAX_BYTES,GOOGLE_CLOUD_PROJECT=$PROJECT_ID" \
  "$auth_flag"

# ---- who may invoke it ---------------------------------------------------------------------------
for member in ${invokers[@]+"${invokers[@]}"}; do
  log "granting roles/run.invoker on $SERVICE to $member"
  gcloud run services add-iam-policy-binding "$SERVICE" --project="$PROJECT_ID" --region="$REGION" \
    --member="$member" --role=roles/run.invoker --quiet >/dev/null
done

url="$(gcloud run services describe "$SERVICE" --project="$PROJECT_ID" --region="$REGION" --format='value(status.url)')"
echo "Deployed: $url"
echo "Which sandbox mode it runs in:"
echo "  curl -H \"Authorization: Bearer \$(gcloud auth print-identity-token)\" $url/health"
