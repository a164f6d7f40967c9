"""JanusFlow-1.3B: our own modules over the published weights (`config`, `modules`,
`attention`, `load`), the rectified-flow `sampler`, `understand`, and the `runner`."""
