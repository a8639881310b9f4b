"""Community submissions: bundles built from a lab's lake, checked completely, ingested
all or nothing (docs/community.md)."""
