#!/usr/bin/env bash
# Prepare a GCS bucket and the identity the product cutout service signs URLs with.
#
#   PROJECT=my-project REGION=europe-west4 BUCKET=my-cutouts \
#   KSA_NAMESPACE=default KSA_NAME=product-cutout ./cluster/gcs/setup.sh
#
# What it does (idempotent where gcloud allows):
#   1. bucket with uniform bucket-level access, public access prevention, soft delete off,
#      and a lifecycle rule deleting results after 1 day (URLs live 1 hour);
#   2. a Google service account `cutout-uploader` with object creator + viewer on the bucket
#      only, and token creator on itself (IAM signBlob, for signing URLs without a key).
#      No delete or update: the service never overwrites or deletes a result (the lifecycle
#      rule does), and its start-up check writes nothing (it asks the bucket for
#      storage.objects.create and storage.objects.get with testIamPermissions);
#   3. Workload Identity: the Kubernetes service account of the Ray pods may act as it.
# Then set storage_uri: gs://$BUCKET/cutouts in cluster/serve_config.gpu.yaml and `make manifests`.
set -euo pipefail
: "${PROJECT:?}" "${REGION:?}" "${BUCKET:?}"
KSA_NAMESPACE=${KSA_NAMESPACE:-default}
KSA_NAME=${KSA_NAME:-product-cutout}
GSA_NAME=${GSA_NAME:-cutout-uploader}
GSA="${GSA_NAME}@${PROJECT}.iam.gserviceaccount.com"
HERE=$(cd "$(dirname "$0")" && pwd)

gcloud storage buckets create "gs://${BUCKET}" --project="$PROJECT" --location="$REGION" \
  --uniform-bucket-level-access --public-access-prevention --soft-delete-duration=0 || true
gcloud storage buckets update "gs://${BUCKET}" --uniform-bucket-level-access \
  --public-access-prevention --clear-soft-delete --lifecycle-file="$HERE/lifecycle.json"

gcloud iam service-accounts create "$GSA_NAME" --project="$PROJECT" \
  --display-name="product cutout uploader" || true
# objectCreator: create-only uploads; objectViewer: metadata and signed GET URLs; nothing more
gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" \
  --member="serviceAccount:${GSA}" --role=roles/storage.objectCreator
gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" \
  --member="serviceAccount:${GSA}" --role=roles/storage.objectViewer
# signBlob as itself: signed URLs without a private key (Workload Identity)
gcloud iam service-accounts add-iam-policy-binding "$GSA" --project="$PROJECT" \
  --member="serviceAccount:${GSA}" --role=roles/iam.serviceAccountTokenCreator

# Workload Identity: the pods' Kubernetes service account acts as the Google service account
gcloud iam service-accounts add-iam-policy-binding "$GSA" --project="$PROJECT" \
  --role=roles/iam.workloadIdentityUser \
  --member="serviceAccount:${PROJECT}.svc.id.goog[${KSA_NAMESPACE}/${KSA_NAME}]"
kubectl create serviceaccount "$KSA_NAME" --namespace "$KSA_NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
kubectl annotate serviceaccount "$KSA_NAME" --namespace "$KSA_NAMESPACE" --overwrite \
  "iam.gke.io/gcp-service-account=${GSA}"
echo "ready: CUTOUT_STORAGE_URI=gs://${BUCKET}/cutouts, pods run as ${KSA_NAMESPACE}/${KSA_NAME}"
