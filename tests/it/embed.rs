//! `examples/embed.rs` runs as part of the suite.

#[allow(dead_code)] // its `main` is for `cargo run --example embed`
#[path = "../../examples/embed.rs"]
mod example;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedding_example_runs_a_job_end_to_end() {
    let out = example::run().await.unwrap();
    assert_eq!(out, "hello from an embedded runtime\n");
}
