//! The three ways of making one no-op provider call that the hot-path benchmark
//! (`benches/hot_path.rs`) and the `protection_latency` example compare in one run:
//!
//! - bare: `provider.run(..)` on the no-op provider;
//! - tower: the same call through `ServiceBuilder` rate limit + retry + timeout, the stack a
//!   user of tower would write by hand;
//! - sandwarden: `pool::protected_call`, the function every worker calls per provider call
//!   (limiter, published breaker state and its outcome cast, retry policy, step deadline,
//!   cancellation, the call counter and latency histogram).
//!
//! The limiter costs differ by operation: one with no limit is tracked by a cast (the default
//! for `run` on the local provider), one with a limit asks the limiter actor and waits for the
//! answer. `Rig` holds one worker context for each.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use sandwarden::Settings;
use sandwarden::pool::WorkerContext;
use sandwarden::provider::noop::NoopProvider;
use sandwarden::provider::{Provider, ProviderError, RunOutput, RunSpec};
use sandwarden::ratelimit::policy::Operation;
use sandwarden::retry::RetryPolicy;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceBuilder, ServiceExt};

/// The step deadline every protected call runs under (the default `run` timeout).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Everything the three variants share, and the actors behind the sandwarden one.
pub struct Rig {
    pub provider: Arc<dyn Provider>,
    pub spec: RunSpec,
    /// `run` unlimited: the limiter is told by a cast.
    pub unlimited: Arc<WorkerContext>,
    /// `run` with a (never reached) limit: the limiter actor is asked by a call.
    pub limited: Arc<WorkerContext>,
    pub cancel: CancellationToken,
    _dirs: Vec<tempfile::TempDir>,
}

impl Rig {
    /// Start a breaker and a limiter actor (each on its own store) per context. Call inside
    /// the tokio runtime that will run the calls.
    pub async fn start() -> Rig {
        let (sup, _) = ractor::Actor::spawn(None, Idle, ())
            .await
            .expect("the bench supervisor starts");
        let mut dirs = Vec::new();
        let unlimited = context(&sup, &mut dirs, None).await;
        let limited = context(&sup, &mut dirs, Some(u32::MAX)).await;
        Rig {
            provider: Arc::new(NoopProvider),
            spec: RunSpec {
                cmd: "true".into(),
                timeout: DEADLINE,
                env: Default::default(),
                max_output: 1 << 20,
            },
            unlimited,
            limited,
            cancel: CancellationToken::new(),
            _dirs: dirs,
        }
    }

    pub async fn bare(&self) -> RunOutput {
        self.provider
            .run("noop", &self.spec)
            .await
            .expect("the no-op provider succeeds")
    }

    pub async fn sandwarden(&self, ctx: &WorkerContext) -> RunOutput {
        sandwarden::pool::protected_call(
            ctx,
            "bench",
            Operation::Run,
            DEADLINE,
            &self.cancel,
            |_| self.provider.run("noop", &self.spec),
        )
        .await
        .expect("the protected no-op call succeeds")
    }

    /// A fresh tower stack over the no-op provider (rate limit outermost: `RateLimit` is not
    /// `Clone`, which `Retry` needs of what it wraps).
    pub fn tower(&self) -> TowerStack {
        let provider = self.provider.clone();
        let spec = Arc::new(self.spec.clone());
        let call = tower::service_fn(move |_: ()| {
            let provider = provider.clone();
            let spec = spec.clone();
            async move { provider.run("noop", &spec).await }
        });
        let stack = ServiceBuilder::new()
            // Like the limiter on `run` by default: counted, never reached.
            .rate_limit(u64::MAX / 2, Duration::from_secs(3600))
            .retry(Transient { left: 3 })
            .timeout(DEADLINE)
            .service(call);
        TowerStack(Box::new(Boxed(stack)))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture = Pin<Box<dyn Future<Output = Result<RunOutput, BoxError>> + Send>>;

/// The tower stack behind one object, so the example and the benchmark need not spell its type.
pub struct TowerStack(
    Box<dyn Service<(), Response = RunOutput, Error = BoxError, Future = BoxFuture> + Send>,
);

impl TowerStack {
    pub async fn call(&mut self) -> RunOutput {
        self.0
            .ready()
            .await
            .expect("the stack is ready")
            .call(())
            .await
            .expect("the no-op call succeeds")
    }
}

/// tower's side of the retry policy: up to three retries of transient errors, with the same
/// exponential backoff as sandwarden's default.
#[derive(Clone)]
struct Transient {
    left: u32,
}

impl tower::retry::Policy<(), RunOutput, BoxError> for Transient {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _: &mut (),
        result: &mut Result<RunOutput, BoxError>,
    ) -> Option<Self::Future> {
        let transient = match result {
            Ok(_) => false,
            Err(e) => e
                .downcast_ref::<ProviderError>()
                .is_some_and(|e| e.is_transient()),
        };
        if !transient || self.left == 0 {
            return None;
        }
        let policy = RetryPolicy::default();
        let delay = policy.base * 2u32.pow(3 - self.left);
        self.left -= 1;
        Some(tokio::time::sleep(delay.min(policy.cap)))
    }

    fn clone_request(&mut self, _: &()) -> Option<()> {
        Some(())
    }
}

/// Boxes the stack's future so that `TowerStack` has one nameable type.
struct Boxed<S>(S);

impl<S> Service<()> for Boxed<S>
where
    S: Service<(), Response = RunOutput, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = RunOutput;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: ()) -> BoxFuture {
        Box::pin(self.0.call(req))
    }
}

async fn context(
    sup: &ractor::ActorRef<()>,
    dirs: &mut Vec<tempfile::TempDir>,
    run_limit: Option<u32>,
) -> Arc<WorkerContext> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = sandwarden::store::Store::open(dir.path()).expect("the store opens");
    let mut settings = Settings::with_data_dir(dir.path());
    if let Some(limit) = run_limit {
        settings.ratelimit.limits.insert(Operation::Run, limit);
    }
    let metrics = Arc::new(sandwarden::metrics::Metrics::default());
    let (breaker, _) = sandwarden::breaker::CircuitBreakerActor::start(
        sandwarden::breaker::BreakerArgs {
            provider: "noop".into(),
            settings: settings.breaker.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
        },
        sup.get_cell(),
    )
    .await
    .expect("the breaker starts");
    let (limiter, _) = sandwarden::ratelimit::RateLimiterActor::start(
        sandwarden::ratelimit::LimiterArgs {
            settings: settings.ratelimit.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
        },
        sup.get_cell(),
    )
    .await
    .expect("the limiter starts");
    dirs.push(dir);
    Arc::new(WorkerContext {
        provider: Arc::new(NoopProvider),
        retry: RetryPolicy::default(),
        breaker,
        limiter,
        metrics,
        store,
        instance: "bench".into(),
        max_attempts: settings.max_attempts,
        max_output: settings.max_output_bytes,
        max_read: settings.max_read_bytes,
        create_timeout: settings.create_timeout,
        write_timeout: settings.write_timeout,
        faults: Default::default(),
        protection: sandwarden::config::Protection::Full,
    })
}

/// A supervisor for the actors that ignores their events.
struct Idle;

impl ractor::Actor for Idle {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ractor::ActorRef<()>,
        _: (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ractor::ActorRef<()>,
        _: ractor::SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }
}
