"""The browser gateway: gRPC-web and Connect in front of the services, and the pages (docs/gateway.md)."""
