output "service_url" {
  description = "HTTPS endpoint of the service."
  value       = google_cloud_run_v2_service.service.uri
}

output "runtime_service_account_email" {
  description = "The identity the service runs as. It holds no IAM roles."
  value       = google_service_account.runtime.email
}

output "image" {
  description = "The image the service runs."
  value       = local.image
}

output "image_repository" {
  description = "Where cloudbuild.yaml pushes images (its _REGION, _REPOSITORY and _SERVICE must match)."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}/${var.service_name}"
}

output "request_timeout_seconds" {
  description = "Cloud Run request timeout derived from script_timeout_ms, max_queue_wait_ms and the margin."
  value       = local.request_timeout_seconds
}

output "health_check_command" {
  description = "Shows the sandbox mode the service chose and its capability probe findings."
  value       = "curl -H \"Authorization: Bearer $(gcloud auth print-identity-token)\" ${google_cloud_run_v2_service.service.uri}/health"
}
