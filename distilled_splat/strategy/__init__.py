"""Densification strategies in gsplat's shape: capped growth, the student's compaction, relocation on any device."""
