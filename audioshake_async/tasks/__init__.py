"""The AudioShake Tasks API: wire rules, resources, the client, its batch provider, webhooks."""
