terraform {
  # Cross-object references in lifecycle preconditions need Terraform 1.2+; 1.5 is tested usage.
  required_version = ">= 1.5"

  required_providers {
    google = {
      source = "hashicorp/google"
      # Pinned to the 7.x line from 7.45 on: the argument names used here were checked against the
      # google_cloud_run_v2_service documentation of provider 7.45.0. A new major version (8.x)
      # must be adopted deliberately, after reading its upgrade guide.
      version = "~> 7.45"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
