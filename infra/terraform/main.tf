# The secure Python execution service on Cloud Run (gen2), locked down:
#   - a dedicated runtime service account holding no IAM roles at all;
#   - no public access unless allow_unauthenticated = true; invokers are listed explicitly;
#   - Cloud Run's request concurrency equal to the service's own admission limit;
#   - a startup probe that runs a canary script through the real sandbox.
# See infra/README.md for the step-by-step and for how the limits relate.

locals {
  image = coalesce(
    var.image,
    "${var.region}-docker.pkg.dev/${var.project_id}/${var.repository_id}/${var.service_name}:${coalesce(var.image_tag, "unset")}",
  )

  # A request may first wait for a run slot, then run: the request timeout outlasts both.
  request_timeout_seconds = ceil((var.script_timeout_ms + var.max_queue_wait_ms) / 1000) + var.request_timeout_margin_seconds

  # What all runs of one instance may use at once, beside the service itself.
  memory_needed_mib = var.max_concurrent_runs * var.script_memory_mb + var.service_overhead_mib

  # Cloud Run: 4 vCPUs need at least 2 GiB, 6 or 8 vCPUs at least 4 GiB.
  memory_floor_for_cpu_mib = lookup({ "4" = 2048, "6" = 4096, "8" = 4096 }, var.cpu, 512)
}

# ---- APIs ------------------------------------------------------------------------------------

resource "google_project_service" "apis" {
  for_each = toset([
    "run.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "iam.googleapis.com",
  ])

  project = var.project_id
  service = each.value
  # Other things in the project may use these APIs: never switch them off on destroy.
  disable_on_destroy = false
}

# ---- image repository ------------------------------------------------------------------------

resource "google_artifact_registry_repository" "images" {
  project       = var.project_id
  location      = var.region
  repository_id = var.repository_id
  format        = "DOCKER"
  description   = "Images of the ${var.service_name} Cloud Run service (built by cloudbuild.yaml)."

  depends_on = [google_project_service.apis]
}

# ---- runtime identity ------------------------------------------------------------------------

# The identity the service runs as. It is deliberately granted NO IAM roles anywhere (no
# google_project_iam_* or other bindings name it): scripts run inside the container and could
# reach the metadata server, and a token for an account with no permissions is worth nothing.
# The service needs no Google API to do its work (it logs to stdout).
resource "google_service_account" "runtime" {
  project      = var.project_id
  account_id   = var.runtime_service_account_id
  display_name = "${var.service_name} runtime (no roles)"
  description  = "Identity of the ${var.service_name} Cloud Run service. Deliberately holds no IAM roles."

  depends_on = [google_project_service.apis]
}

# ---- the service -----------------------------------------------------------------------------

resource "google_cloud_run_v2_service" "service" {
  project  = var.project_id
  location = var.region
  name     = var.service_name
  ingress  = var.ingress

  # IAM decides who may invoke it (see the iam_member resources below); never bypass the check.
  invoker_iam_disabled = false

  # Provider 6+ refuses to delete a Cloud Run service while this is true (its default). Kept on,
  # and explicit, so a `terraform destroy` or a replacing change cannot take the endpoint away by
  # accident. To remove the service on purpose: set deletion_protection = false, apply, then destroy.
  deletion_protection = var.deletion_protection

  template {
    service_account = google_service_account.runtime.email

    # gen2 offers full Linux compatibility (gen1 emulates system calls). The service probes it
    # at start-up for the namespaces nsjail needs and, under SANDBOX_MODE=auto, falls back to
    # seccomp mode when they are refused.
    execution_environment = "EXECUTION_ENVIRONMENT_GEN2"

    # The service admits max_concurrent_runs runs at once; Cloud Run sends it no more than that.
    max_instance_request_concurrency = var.max_concurrent_runs

    timeout = "${local.request_timeout_seconds}s"

    scaling {
      min_instance_count = var.min_instances
      max_instance_count = var.max_instances
    }

    containers {
      image = local.image

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = var.cpu
          memory = "${var.memory_mib}Mi"
        }
        # CPU only while requests are in flight (runs happen inside requests), boosted at start-up.
        cpu_idle          = true
        startup_cpu_boost = true
      }

      env {
        name  = "SANDBOX_MODE"
        value = var.sandbox_mode
      }
      env {
        name  = "MAX_CONCURRENT_RUNS"
        value = var.max_concurrent_runs
      }
      env {
        name  = "SCRIPT_TIMEOUT_MS"
        value = var.script_timeout_ms
      }
      env {
        name  = "SCRIPT_MEMORY_MB"
        value = var.script_memory_mb
      }
      env {
        name  = "MAX_QUEUE"
        value = var.max_queue
      }
      env {
        name  = "MAX_QUEUE_WAIT_MS"
        value = var.max_queue_wait_ms
      }
      env {
        name  = "SHUTDOWN_GRACE_MS"
        value = var.shutdown_grace_ms
      }
      env {
        name  = "REQUEST_MAX_BYTES"
        value = var.request_max_bytes
      }
      env {
        name  = "GOOGLE_CLOUD_PROJECT"
        value = var.project_id
      }

      # Ready only once a canary script has run through the real sandbox. With
      # SANDBOX_MODE=nsjail and no usable namespaces the probe gets 503 and the revision never
      # serves. Budget: failure_threshold x period_seconds = 120 s (Cloud Run allows up to 240 s).
      # /health, not /healthz: Cloud Run reserves some paths ending in z and answers them itself.
      startup_probe {
        initial_delay_seconds = 0
        period_seconds        = 10
        timeout_seconds       = 9
        failure_threshold     = 12
        http_get {
          path = "/health?deep=1"
          port = 8080
        }
      }
    }
  }

  lifecycle {
    precondition {
      condition     = var.image != null || var.image_tag != null
      error_message = "Set image_tag to the tag cloudbuild.yaml built (or image to a full reference). See infra/README.md, Terraform path, step 3."
    }
    precondition {
      condition     = local.memory_needed_mib <= var.memory_mib
      error_message = "max_concurrent_runs x script_memory_mb + service_overhead_mib = ${local.memory_needed_mib} MiB does not fit in memory_mib = ${var.memory_mib}."
    }
    precondition {
      condition     = var.memory_mib >= local.memory_floor_for_cpu_mib
      error_message = "Cloud Run needs at least ${local.memory_floor_for_cpu_mib} MiB for ${var.cpu} vCPUs."
    }
    precondition {
      condition     = local.request_timeout_seconds * 1000 > var.script_timeout_ms + var.max_queue_wait_ms && local.request_timeout_seconds <= 3600
      error_message = "The request timeout (${local.request_timeout_seconds} s) must exceed script_timeout_ms + max_queue_wait_ms and stay within Cloud Run's 3600 s."
    }
    precondition {
      condition     = var.min_instances <= var.max_instances
      error_message = "min_instances must not exceed max_instances."
    }
  }

  depends_on = [google_project_service.apis]
}

# ---- who may invoke it -----------------------------------------------------------------------

resource "google_cloud_run_v2_service_iam_member" "invokers" {
  for_each = toset(var.invoker_members)

  project  = google_cloud_run_v2_service.service.project
  location = google_cloud_run_v2_service.service.location
  name     = google_cloud_run_v2_service.service.name
  role     = "roles/run.invoker"
  member   = each.value
}

# Public access exists only when asked for.
resource "google_cloud_run_v2_service_iam_member" "public" {
  count = var.allow_unauthenticated ? 1 : 0

  project  = google_cloud_run_v2_service.service.project
  location = google_cloud_run_v2_service.service.location
  name     = google_cloud_run_v2_service.service.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}
