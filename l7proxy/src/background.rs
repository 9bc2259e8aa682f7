//! The process's background tasks on one thread: Pingora gives each service
//! a runtime and a thread of its own, and these tasks (watching for the end
//! of a drain, upstream health checks and DNS, signals) are idle nearly all
//! the time. One thread for all of them is one fewer per task in every
//! tenant process (bench/RESULTS.md, "A thousand sites").

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// Background tasks run side by side on one runtime; ends when all have.
#[derive(Default)]
pub struct Together(Vec<Box<dyn BackgroundService + Send + Sync>>);

impl Together {
    /// Adds a task.
    pub fn with(mut self, task: impl BackgroundService + Send + Sync + 'static) -> Together {
        self.0.push(Box::new(task));
        self
    }
}

#[async_trait]
impl BackgroundService for Together {
    async fn start(&self, shutdown: ShutdownWatch) {
        futures::future::join_all(self.0.iter().map(|task| task.start(shutdown.clone()))).await;
    }
}
