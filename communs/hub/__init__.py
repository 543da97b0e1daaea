"""Urban data hub: ETSI NGSI-LD context information management."""
