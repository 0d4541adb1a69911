"""em_daq: one node's acquirer and forwarder in one process (the seed's `em_daq`, for hosts without Docker)."""
