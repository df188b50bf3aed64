# Defaults match cloudbuild.yaml's substitutions and infra/gcloud/deploy.sh, so the three paths
# deploy the same service. infra/README.md explains how the limits relate.

# ---- where -----------------------------------------------------------------------------------

variable "project_id" {
  description = "Google Cloud project id to deploy into."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project id: 6-30 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  description = "Region of the Cloud Run service and of the Artifact Registry repository."
  type        = string
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as us-central1 or europe-west1."
  }
}

variable "service_name" {
  description = "Cloud Run service name; also the image name inside the repository."
  type        = string
  default     = "python-exec"

  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$", var.service_name))
    error_message = "service_name must be a lowercase DNS label of at most 49 characters."
  }
}

variable "repository_id" {
  description = "Artifact Registry Docker repository holding the service image."
  type        = string
  default     = "python-exec"

  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", var.repository_id))
    error_message = "repository_id must be lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "runtime_service_account_id" {
  description = "Account id of the dedicated runtime service account. It is granted no IAM roles."
  type        = string
  default     = "python-exec-runtime"

  validation {
    condition     = can(regex("^[a-z][-a-z0-9]{4,28}[a-z0-9]$", var.runtime_service_account_id))
    error_message = "runtime_service_account_id must be 6-30 lowercase letters, digits and hyphens."
  }
}

# ---- what ------------------------------------------------------------------------------------

variable "image_tag" {
  description = "Tag of the image built by cloudbuild.yaml (gcloud builds submit --substitutions=_DEPLOY=false,_TAG=<tag>). Ignored when image is set."
  type        = string
  default     = null

  validation {
    condition     = var.image_tag == null || can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag))
    error_message = "image_tag must be a valid Docker tag."
  }
}

variable "image" {
  description = "Full image reference to deploy instead of <region>-docker.pkg.dev/<project>/<repository_id>/<service_name>:<image_tag>, e.g. one pinned by digest."
  type        = string
  default     = null
}

# ---- who may call it -------------------------------------------------------------------------

variable "invoker_members" {
  description = "IAM members granted roles/run.invoker on the service, e.g. [\"user:you@example.com\", \"serviceAccount:caller@p.iam.gserviceaccount.com\"]."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.invoker_members : can(regex("^(user|serviceAccount|group|domain|principal|principalSet):.+$", m))])
    error_message = "invoker_members entries must be IAM members such as user:..., serviceAccount:..., group:... (allUsers is not accepted here; see allow_unauthenticated)."
  }
}

variable "allow_unauthenticated" {
  description = "Make the endpoint public: grant roles/run.invoker to allUsers. Leave false to require an identity token from an IAM-authorised caller."
  type        = bool
  default     = false
}

variable "ingress" {
  description = "Which networks may reach the service: INGRESS_TRAFFIC_ALL, INGRESS_TRAFFIC_INTERNAL_ONLY or INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER. IAM applies in every case."
  type        = string
  default     = "INGRESS_TRAFFIC_ALL"

  validation {
    condition     = contains(["INGRESS_TRAFFIC_ALL", "INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"], var.ingress)
    error_message = "ingress must be INGRESS_TRAFFIC_ALL, INGRESS_TRAFFIC_INTERNAL_ONLY or INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER."
  }
}

# ---- instance size and scaling ---------------------------------------------------------------

variable "cpu" {
  description = "vCPUs per instance."
  type        = string
  default     = "2"

  validation {
    condition     = contains(["1", "2", "4", "6", "8"], var.cpu)
    error_message = "cpu must be 1, 2, 4, 6 or 8."
  }
}

variable "memory_mib" {
  description = "Memory per instance in MiB. Must hold max_concurrent_runs x script_memory_mb + service_overhead_mib."
  type        = number
  default     = 2048

  validation {
    condition     = var.memory_mib >= 512 && var.memory_mib <= 32768 && floor(var.memory_mib) == var.memory_mib
    error_message = "memory_mib must be a whole number from 512 (the gen2 minimum) to 32768."
  }
}

variable "min_instances" {
  description = "Instances kept warm (0 scales to zero; 1 avoids cold starts at a cost)."
  type        = number
  default     = 0

  validation {
    condition     = var.min_instances >= 0 && floor(var.min_instances) == var.min_instances
    error_message = "min_instances must be a whole number, 0 or more."
  }
}

variable "max_instances" {
  description = "Upper bound on instances: caps cost and the total number of runs (max_instances x max_concurrent_runs)."
  type        = number
  default     = 10

  validation {
    condition     = var.max_instances >= 1 && floor(var.max_instances) == var.max_instances
    error_message = "max_instances must be a whole number, 1 or more."
  }
}

# ---- service configuration (environment variables) -------------------------------------------

variable "sandbox_mode" {
  description = "SANDBOX_MODE: auto (nsjail if namespaces work, else seccomp), nsjail (refuse with 503 rather than fall back), or seccomp."
  type        = string
  default     = "auto"

  validation {
    condition     = contains(["auto", "nsjail", "seccomp"], var.sandbox_mode)
    error_message = "sandbox_mode must be auto, nsjail or seccomp."
  }
}

variable "max_concurrent_runs" {
  description = "MAX_CONCURRENT_RUNS, the service's admission limit. Cloud Run's per-instance request concurrency is set to the same number, so Cloud Run never sends an instance more requests than it will run."
  type        = number
  default     = 2

  validation {
    condition     = var.max_concurrent_runs >= 1 && var.max_concurrent_runs <= 1000 && floor(var.max_concurrent_runs) == var.max_concurrent_runs
    error_message = "max_concurrent_runs must be a whole number from 1 to 1000 (Cloud Run's concurrency range)."
  }
}

variable "script_timeout_ms" {
  description = "SCRIPT_TIMEOUT_MS, wall-clock limit of one run."
  type        = number
  default     = 10000

  validation {
    condition     = var.script_timeout_ms >= 100 && var.script_timeout_ms <= 3000000 && floor(var.script_timeout_ms) == var.script_timeout_ms
    error_message = "script_timeout_ms must be a whole number from 100 to 3000000."
  }
}

variable "script_memory_mb" {
  description = "SCRIPT_MEMORY_MB, memory limit of each run."
  type        = number
  default     = 512

  validation {
    condition     = var.script_memory_mb >= 64 && floor(var.script_memory_mb) == var.script_memory_mb
    error_message = "script_memory_mb must be a whole number, 64 or more."
  }
}

variable "max_queue" {
  description = "MAX_QUEUE, requests that may wait for a free run slot before the service answers 429."
  type        = number
  default     = 4

  validation {
    condition     = var.max_queue >= 0 && floor(var.max_queue) == var.max_queue
    error_message = "max_queue must be a whole number, 0 or more."
  }
}

variable "max_queue_wait_ms" {
  description = "MAX_QUEUE_WAIT_MS, longest wait for a run slot before 429. Counts towards the request timeout."
  type        = number
  default     = 10000

  validation {
    condition     = var.max_queue_wait_ms >= 0 && floor(var.max_queue_wait_ms) == var.max_queue_wait_ms
    error_message = "max_queue_wait_ms must be a whole number, 0 or more."
  }
}

variable "shutdown_grace_ms" {
  description = "SHUTDOWN_GRACE_MS, how long in-flight runs may finish after SIGTERM. Cloud Run sends SIGKILL 10 s after SIGTERM."
  type        = number
  default     = 8000

  validation {
    condition     = var.shutdown_grace_ms >= 0 && var.shutdown_grace_ms < 10000
    error_message = "shutdown_grace_ms must be below 10000: Cloud Run kills the container 10 s after SIGTERM."
  }
}

variable "request_max_bytes" {
  description = "REQUEST_MAX_BYTES, largest accepted request body."
  type        = number
  default     = 1048576

  validation {
    condition     = var.request_max_bytes >= 64 && var.request_max_bytes <= 33554432
    error_message = "request_max_bytes must be from 64 to 33554432 (Cloud Run's 32 MiB request limit)."
  }
}

variable "service_overhead_mib" {
  description = "Memory kept for the service itself (Node.js, nsjail, buffers) beside the runs, in MiB."
  type        = number
  default     = 512

  validation {
    condition     = var.service_overhead_mib >= 256
    error_message = "service_overhead_mib must be at least 256."
  }
}

variable "request_timeout_margin_seconds" {
  description = "Cloud Run's request timeout is the script timeout plus the longest queue wait, rounded up to seconds, plus this margin (process start, result encoding, slow clients)."
  type        = number
  default     = 30

  validation {
    condition     = var.request_timeout_margin_seconds >= 1 && floor(var.request_timeout_margin_seconds) == var.request_timeout_margin_seconds
    error_message = "request_timeout_margin_seconds must be a whole number, 1 or more."
  }
}

variable "deletion_protection" {
  description = "Refuse to delete the Cloud Run service from Terraform (destroy, or a change forcing replacement). Set false and apply before terraform destroy."
  type        = bool
  default     = true
}
