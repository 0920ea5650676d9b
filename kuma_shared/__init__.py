"""Code kuma-cp and kuma-dp both run, in one place: the agent may import nothing of the control plane but
`controlplane.resources`, so what both need lives here (standard library only, and PyYAML, which both ship).
Shipped in both packages."""
