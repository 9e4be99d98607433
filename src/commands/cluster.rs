//! `sellable ballista scheduler|executor`: the processes of a Ballista cluster that runs the
//! nightly job (`sellable batch --engine ballista --scheduler df://HOST:PORT`). They are Ballista's
//! own, with sellable's codecs: the scheduler plans over the lake's tables, the executors read
//! the lake's datasets where they run.

use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use sellable_batch::{executor_functions, LakeLogicalCodec, LakePhysicalCodec, MAX_PLAN_BYTES};

use crate::cli::{ExecutorArgs, SchedulerArgs};

pub async fn scheduler(args: &SchedulerArgs) -> Result<()> {
    let config = SchedulerConfig {
        bind_host: args.bind.ip().to_string(),
        bind_port: args.bind.port(),
        external_host: args.bind.ip().to_string(),
        grpc_server_max_decoding_message_size: MAX_PLAN_BYTES as u32,
        grpc_server_max_encoding_message_size: MAX_PLAN_BYTES as u32,
        override_logical_codec: Some(Arc::new(LakeLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(LakePhysicalCodec::default())),
        ..SchedulerConfig::default()
    };
    let cluster = BallistaCluster::new_from_config(&config).await.map_err(|error| anyhow!("the scheduler's cluster state: {error}"))?;
    eprintln!("ballista scheduler: listening on {} (clients: --scheduler df://{})", args.bind, args.bind);
    ballista_scheduler::scheduler_process::start_server(cluster, args.bind, Arc::new(config))
        .await
        .map_err(|error| anyhow!("the scheduler on {}: {error}", args.bind))
}

pub async fn executor(args: &ExecutorArgs) -> Result<()> {
    let (host, port) = args.scheduler.rsplit_once(':').context("--scheduler is HOST:PORT")?;
    let scheduler_port = port.parse().with_context(|| format!("--scheduler {}: '{port}' is not a port", args.scheduler))?;
    wait_for_scheduler(host, scheduler_port).await?;
    let config = ExecutorProcessConfig {
        bind_host: args.host.clone(),
        external_host: Some(args.host.clone()),
        port: args.port,
        grpc_port: args.grpc_port,
        scheduler_host: host.to_string(),
        scheduler_port,
        concurrent_tasks: args.tasks.unwrap_or(0),
        work_dir: args.work_dir.as_ref().map(|dir| dir.display().to_string()),
        memory_pool_size: args.memory_mb.map(|mb| (mb as u64) << 20),
        grpc_max_decoding_message_size: MAX_PLAN_BYTES as u32,
        grpc_max_encoding_message_size: MAX_PLAN_BYTES as u32,
        override_logical_codec: Some(Arc::new(LakeLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(LakePhysicalCodec::default())),
        override_function_registry: Some(executor_functions()?),
        ..ExecutorProcessConfig::default()
    };
    eprintln!("ballista executor: {}:{} (Flight) and :{} (gRPC), of the scheduler {}", args.host, args.port, args.grpc_port, args.scheduler);
    start_executor_process(Arc::new(config)).await.map_err(|error| anyhow!("the executor: {error}"))
}

/// Waits up to a minute for the scheduler at `host:port` to take connections: Ballista's executor
/// gives up at once when it finds none, and a scheduler started at the same time may not listen
/// yet.
async fn wait_for_scheduler(host: &str, port: u16) -> Result<()> {
    let started = std::time::Instant::now();
    let mut said = false;
    while tokio::net::TcpStream::connect((host, port)).await.is_err() {
        if started.elapsed() > std::time::Duration::from_secs(60) {
            anyhow::bail!("the scheduler at {host}:{port} did not take connections within 60 s");
        }
        if !said {
            eprintln!("ballista executor: waiting for the scheduler at {host}:{port}");
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    Ok(())
}
