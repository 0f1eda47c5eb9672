//! The tutorial's sample app (`gcr.io/google-samples/hello-app`).
