"""The OIP v2 gRPC front end (`inference.GRPCInferenceService`) over the shared dataplane."""
