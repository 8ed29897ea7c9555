//! Images: a prebuilt image URI is used as it is; otherwise the app directory is built with the
//! `docker` CLI, tagged with the deployment id, and pushed to the baseline's ECR repository after
//! logging in with an ECR authorization token.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_ecr::types::ImageIdentifier;
use flotilla_core::DeploymentId;
use flotilla_engine::events::BuildLines;
use flotilla_engine::ports::{ErrorKind, ImageRef, ImageRequest, ImageSource, PortError};
use flotilla_engine::{Event, Progress};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use flotilla_baseline::Architecture;

use crate::ctx::Ctx;
use crate::error::port_error;

/// The build log at `path`, created owner-only with its directory (and `.flotilla/.gitignore`);
/// `None` when it cannot be written, which does not stop the build.
fn open_build_log(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let parent = path.parent()?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .ok()?;
    crate::dot_flotilla::ignore(parent).ok()?;
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .ok()
}

/// A fresh private directory for an image's build context.
fn tempfile_dir() -> Result<std::path::PathBuf, PortError> {
    let dir = std::env::temp_dir().join(format!(
        "flotilla-agent-image-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| {
        PortError::new(
            ErrorKind::Transient,
            "build agent image",
            dir.display().to_string(),
            e.to_string(),
        )
    })?;
    Ok(dir)
}

fn set_executable(path: &Path) -> Result<(), PortError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(|e| {
        PortError::new(
            ErrorKind::Transient,
            "build agent image",
            path.display().to_string(),
            e.to_string(),
        )
    })
}

/// What a version's task runs besides the app image: the app's command inside it (after the
/// agent's `--`) and the agent's image for the init container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskImages {
    /// The app's command: `[aws] command` through `/bin/sh -c`, or the image's ENTRYPOINT + CMD.
    pub app_command: Vec<String>,
    /// The agent image (FROM scratch with the static agent).
    pub agent_image: String,
}

/// The parts of an image's config flotilla reads (`docker image inspect`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct ImageConfig {
    /// `Architecture`: `amd64`, `arm64`, ...
    #[serde(rename = "Architecture", default)]
    pub architecture: String,
    /// `Config.Entrypoint`.
    #[serde(skip)]
    pub entrypoint: Vec<String>,
    /// `Config.Cmd`.
    #[serde(skip)]
    pub cmd: Vec<String>,
}

impl ImageConfig {
    /// Parses `docker image inspect`'s JSON (an array of one object).
    pub fn from_inspect(text: &str) -> Option<ImageConfig> {
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        let first = value.as_array()?.first()?;
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        Some(ImageConfig {
            architecture: first["Architecture"].as_str().unwrap_or("").to_owned(),
            entrypoint: strings(&first["Config"]["Entrypoint"]),
            cmd: strings(&first["Config"]["Cmd"]),
        })
    }

    /// What the container runs when neither entryPoint nor command is overridden.
    pub fn command(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

/// The agent image's tag for `binary`'s bytes: the flotilla version, the architecture and a
/// digest of the executable, so a rebuilt agent gets a new tag in an immutable repository.
pub fn agent_tag(binary: &[u8], architecture: Architecture) -> String {
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(binary));
    format!(
        "flotilla-agent-{}-{}-{}",
        env!("CARGO_PKG_VERSION"),
        architecture.as_lambda(),
        &digest[..12]
    )
}

/// The Dockerfile of the agent image: nothing but the static agent.
pub const AGENT_DOCKERFILE: &str = "FROM scratch\nCOPY flotilla-aws-agent /flotilla-aws-agent\n\
                                    ENTRYPOINT [\"/flotilla-aws-agent\"]\n";

/// The [`ImageSource`] port: prebuilt URIs, or docker build + ECR push.
pub struct EcrImages {
    ctx: Arc<Ctx>,
    docker: String,
}

impl EcrImages {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        let docker = ctx.docker.clone();
        EcrImages { ctx, docker }
    }

    fn repository(&self, id: &DeploymentId) -> Result<&str, PortError> {
        self.ctx.baseline.repository.as_deref().ok_or_else(|| {
            PortError::new(
                ErrorKind::Invalid,
                "build image",
                id.as_str(),
                "no ECR repository is configured to push to; run `flotilla baseline up`, set [aws] \
                 repository, or deploy a prebuilt image with --image URI",
            )
        })
    }

    /// Runs docker with `args`, feeding `stdin` if given; the error names what to do next.
    async fn docker(
        &self,
        args: &[&str],
        stdin: Option<&str>,
        what: &str,
    ) -> Result<String, PortError> {
        let mut cmd = Command::new(&self.docker);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            let message = if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "the `{}` command was not found; install Docker (https://docs.docker.com/engine/install/) \
                     or deploy a prebuilt image with --image URI",
                    self.docker
                )
            } else {
                format!("cannot run `{}`: {e}", self.docker)
            };
            PortError::new(ErrorKind::Unavailable, what, &self.docker, message)
        })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await.map_err(|e| {
                PortError::new(ErrorKind::Transient, what, &self.docker, e.to_string())
            })?;
            drop(pipe);
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| PortError::new(ErrorKind::Transient, what, &self.docker, e.to_string()))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = last.into_iter().rev().collect();
        Err(PortError::new(
            ErrorKind::Invalid,
            what,
            &self.docker,
            format!(
                "`docker {}` failed ({}): {}",
                args.first().copied().unwrap_or(""),
                out.status,
                tail.join(" | ")
            ),
        ))
    }

    /// Runs `docker build` with `args` in the app directory `dir`, showing its output as it comes
    /// (stdout and stderr, one `BuildOutput` event a line) and keeping all of it in
    /// `.flotilla/<name>/logs/build-<id>.log` under `dir`; a failure names its exit status, last
    /// lines and the log.
    async fn docker_build(
        &self,
        id: &DeploymentId,
        args: &[&str],
        dir: &Path,
        progress: &dyn Progress,
    ) -> Result<(), PortError> {
        use tokio::io::AsyncBufReadExt;
        let what = "build image";
        let log_path = dir
            .join(".flotilla")
            .join(self.ctx.name.as_str())
            .join("logs")
            .join(format!("build-{id}.log"));
        let mut log = open_build_log(&log_path);
        progress.event(Event::BuildStarted {
            id: id.clone(),
            command: format!("{} {}", self.docker, args.join(" ")),
            log: log_path.display().to_string(),
        });
        let started = std::time::Instant::now();
        let mut child = Command::new(&self.docker)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                PortError::new(
                    ErrorKind::Unavailable,
                    what,
                    &self.docker,
                    format!("cannot run `{}`: {e}", self.docker),
                )
            })?;
        // Both streams into one channel, so lines keep roughly the order they were printed in
        // (BuildKit's `--progress plain` writes its steps to stderr).
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = tokio::io::BufReader::new(pipe).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut output = BuildLines::new(id.clone(), progress);
        while let Some(line) = lines.recv().await {
            if let Some(file) = log.as_mut() {
                // A log that cannot be written must not fail the build; the events still show it.
                let _ = std::io::Write::write_all(file, format!("{line}\n").as_bytes());
            }
            output.line(&line);
        }
        let status = child
            .wait()
            .await
            .map_err(|e| PortError::new(ErrorKind::Transient, what, &self.docker, e.to_string()))?;
        if status.success() {
            progress.event(Event::BuildFinished {
                id: id.clone(),
                elapsed: started.elapsed(),
                log: log_path.display().to_string(),
            });
            return Ok(());
        }
        Err(PortError::new(
            ErrorKind::Invalid,
            what,
            dir.display().to_string(),
            format!(
                "`docker build` failed ({status}) after {:.1}s; its last lines:\n{}\nthe whole output is in {}",
                started.elapsed().as_secs_f64(),
                output.tail_text(),
                log_path.display()
            ),
        ))
    }

    /// Fails clearly when docker is missing or no engine answers it.
    async fn check_docker(&self) -> Result<(), PortError> {
        match self
            .docker(
                &["version", "--format", "{{.Server.Version}}"],
                None,
                "check docker",
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ErrorKind::Unavailable => Err(e),
            Err(e) => Err(PortError::new(
                ErrorKind::Unavailable,
                "check docker",
                &self.docker,
                format!(
                    "docker is installed but no Docker engine answers ({}); start Docker, \
                     or deploy a prebuilt image with --image URI",
                    e.message
                ),
            )),
        }
    }

    /// Whether the repository already has an image tagged `tag` (a re-run after a crash).
    async fn pushed(&self, repository: &str, tag: &str) -> Result<bool, PortError> {
        let name = repository_name(repository);
        match self
            .ctx
            .clients
            .ecr
            .describe_images()
            .repository_name(name)
            .image_ids(ImageIdentifier::builder().image_tag(tag).build())
            .send()
            .await
        {
            Ok(out) => Ok(!out.image_details().is_empty()),
            Err(e) => {
                let err = port_error("look up image", &format!("{repository}:{tag}"), e);
                if err.kind == ErrorKind::NotFound {
                    Ok(false)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// The config of `image` for the task's architecture: inspected locally, or pulled first
    /// (for a prebuilt image). An image of another architecture is refused.
    pub(crate) async fn inspect(&self, image: &str) -> Result<ImageConfig, PortError> {
        let arch = self.ctx.task.architecture;
        let local = self
            .docker(&["image", "inspect", image], None, "inspect image")
            .await;
        let text = match local {
            Ok(text) => text,
            Err(e) if e.kind == ErrorKind::Unavailable => return Err(e),
            Err(_) => {
                if let Some(repository) = self.ctx.baseline.repository.as_deref()
                    && image.starts_with(repository)
                {
                    self.login(repository).await?;
                }
                self.docker(
                    &["pull", "--platform", arch.as_platform(), image],
                    None,
                    "pull image",
                )
                .await?;
                self.docker(&["image", "inspect", image], None, "inspect image")
                    .await?
            }
        };
        let config = ImageConfig::from_inspect(&text).ok_or_else(|| {
            PortError::new(
                ErrorKind::Invalid,
                "inspect image",
                image,
                "docker image inspect printed no image config",
            )
        })?;
        if Architecture::parse(&config.architecture) != Some(arch) {
            return Err(PortError::new(
                ErrorKind::Invalid,
                "use image",
                image,
                format!(
                    "the image is for {}, but [aws] architecture is {}: build it with \
                     `docker build --platform {}`, or set [aws] architecture to match",
                    if config.architecture.is_empty() {
                        "an unknown architecture"
                    } else {
                        &config.architecture
                    },
                    arch.as_lambda(),
                    arch.as_platform()
                ),
            ));
        }
        Ok(config)
    }

    /// The agent image of the task's architecture in the baseline repository, built from the
    /// static agent and pushed unless a configured one is given or it is there already.
    async fn agent_image(&self, id: &DeploymentId) -> Result<String, PortError> {
        let task = &self.ctx.task;
        if let Some(image) = &task.agent_image {
            return Ok(image.clone());
        }
        let binary = task.agent_binary.as_deref().ok_or_else(|| {
            PortError::new(
                ErrorKind::Invalid,
                "build agent image",
                id.as_str(),
                format!(
                    "no static agent for {}; run `scripts/build-static.sh {}` or set [aws] \
                     agent_image",
                    task.architecture.as_lambda(),
                    task.architecture.as_lambda()
                ),
            )
        })?;
        let bytes = std::fs::read(binary).map_err(|e| {
            PortError::new(
                ErrorKind::Invalid,
                "build agent image",
                binary.display().to_string(),
                format!("cannot read the static agent: {e}"),
            )
        })?;
        let repository = self.repository(id)?.to_owned();
        let tag = agent_tag(&bytes, task.architecture);
        let image = format!("{repository}:{tag}");
        if self.pushed(&repository, &tag).await? {
            return Ok(image);
        }
        self.check_docker().await?;
        let dir = tempfile_dir()?;
        let write = |name: &str, data: &[u8]| {
            std::fs::write(dir.join(name), data).map_err(|e| {
                PortError::new(
                    ErrorKind::Transient,
                    "build agent image",
                    name,
                    e.to_string(),
                )
            })
        };
        write("Dockerfile", AGENT_DOCKERFILE.as_bytes())?;
        write("flotilla-aws-agent", &bytes)?;
        set_executable(&dir.join("flotilla-aws-agent"))?;
        let dir_str = dir.to_string_lossy().into_owned();
        let built = self
            .docker(
                &[
                    "build",
                    "--platform",
                    task.architecture.as_platform(),
                    "--tag",
                    &image,
                    &dir_str,
                ],
                None,
                "build agent image",
            )
            .await;
        let _ = std::fs::remove_dir_all(&dir);
        built?;
        self.push(&repository, &image, "push agent image").await?;
        Ok(image)
    }

    /// Logs in to `repository` and pushes `image`, built and tagged locally just before. When
    /// either fails the local tag is removed: it names an image the repository does not have,
    /// and a later deploy builds it again anyway.
    async fn push(&self, repository: &str, image: &str, what: &str) -> Result<(), PortError> {
        let mut pushed = self.login(repository).await;
        if pushed.is_ok() {
            pushed = self.docker(&["push", image], None, what).await.map(drop);
        }
        if pushed.is_err() {
            // Best effort: the push's failure is what the user needs to see.
            let _ = self
                .docker(&["image", "rm", image], None, "remove local tag")
                .await;
        }
        pushed
    }

    /// What `id`'s task runs beside `image`: its app command and the agent image.
    pub(crate) async fn task_images(
        &self,
        id: &DeploymentId,
        image: &str,
    ) -> Result<TaskImages, PortError> {
        if let Some(known) = self.ctx.cached_task_images(id) {
            return Ok(known);
        }
        let app_command = if self.ctx.task.app_command.is_empty() {
            let command = self.inspect(image).await?.command();
            if command.is_empty() {
                return Err(PortError::new(
                    ErrorKind::Invalid,
                    "use image",
                    image,
                    "the image has neither ENTRYPOINT nor CMD; set [aws] command to the app's \
                     start command",
                ));
            }
            command
        } else {
            if self.ctx.task.agent_image.is_none() || self.check_docker().await.is_ok() {
                // The architecture still matters with a command of our own.
                self.inspect(image).await?;
            }
            self.ctx.task.app_command.clone()
        };
        let images = TaskImages {
            app_command,
            agent_image: self.agent_image(id).await?,
        };
        self.ctx.remember_task_images(id, &images);
        Ok(images)
    }

    async fn login(&self, repository: &str) -> Result<(), PortError> {
        let out = self
            .ctx
            .clients
            .ecr
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| port_error("get ECR login", repository, e))?;
        let token = out
            .authorization_data()
            .first()
            .and_then(|d| d.authorization_token())
            .ok_or_else(|| {
                PortError::new(
                    ErrorKind::Transient,
                    "get ECR login",
                    repository,
                    "no token returned",
                )
            })?;
        let (user, password) = decode_token(token).ok_or_else(|| {
            PortError::new(
                ErrorKind::Invalid,
                "get ECR login",
                repository,
                "the token is not user:password in base64",
            )
        })?;
        let registry = repository.split('/').next().unwrap_or(repository);
        self.docker(
            &["login", "--username", &user, "--password-stdin", registry],
            Some(&password),
            "log in to ECR",
        )
        .await?;
        Ok(())
    }
}

/// The repository name inside a repository URI (`<registry>/<name>` → `<name>`).
fn repository_name(uri: &str) -> &str {
    uri.split_once('/').map_or(uri, |(_, name)| name)
}

/// An ECR authorization token is base64 of `user:password`.
fn decode_token(token: &str) -> Option<(String, String)> {
    let bytes = aws_smithy_types::base64::decode(token).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[async_trait]
impl ImageSource for EcrImages {
    async fn prepare(
        &self,
        id: &DeploymentId,
        request: &ImageRequest,
        progress: &dyn Progress,
    ) -> Result<ImageRef, PortError> {
        let dir = match request {
            ImageRequest::Prebuilt(uri) => {
                if uri.trim().is_empty() || uri.contains(char::is_whitespace) {
                    return Err(PortError::new(
                        ErrorKind::Invalid,
                        "use image",
                        uri,
                        "not an image URI; pass --image REGISTRY/REPOSITORY:TAG",
                    ));
                }
                self.task_images(id, uri).await?;
                return Ok(ImageRef(uri.clone()));
            }
            ImageRequest::Build(dir) => dir,
        };
        let repository = self.repository(id)?.to_owned();
        let image = format!("{repository}:{id}");
        if !Path::new(dir).is_dir() {
            return Err(PortError::new(
                ErrorKind::Invalid,
                "build image",
                dir.display().to_string(),
                "the app directory does not exist",
            ));
        }
        if !self.pushed(&repository, id.as_str()).await? {
            self.check_docker().await?;
            let dir_str = dir.to_string_lossy().into_owned();
            let platform = self.ctx.task.architecture.as_platform();
            self.docker_build(
                id,
                &[
                    "build",
                    "--progress",
                    "plain",
                    "--platform",
                    platform,
                    "--tag",
                    &image,
                    &dir_str,
                ],
                dir,
                progress,
            )
            .await?;
            self.push(&repository, &image, "push image").await?;
        }
        self.task_images(id, &image).await?;
        Ok(ImageRef(image))
    }

    async fn discard(&self, id: &DeploymentId) -> Result<(), PortError> {
        // Only the tag flotilla pushes for this id in the baseline repository; a prebuilt image
        // elsewhere is never touched.
        let Some(repository) = self.ctx.baseline.repository.as_deref() else {
            return Ok(());
        };
        match self
            .ctx
            .clients
            .ecr
            .batch_delete_image()
            .repository_name(repository_name(repository))
            .image_ids(ImageIdentifier::builder().image_tag(id.as_str()).build())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = port_error("delete image", &format!("{repository}:{id}"), e);
                if err.kind == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_repository_names() {
        // base64("AWS:secret")
        assert_eq!(
            decode_token("QVdTOnNlY3JldA=="),
            Some(("AWS".to_owned(), "secret".to_owned()))
        );
        assert_eq!(decode_token("not base64!"), None);
        assert_eq!(
            repository_name("123456789012.dkr.ecr.us-east-1.amazonaws.com/flotilla-prod"),
            "flotilla-prod"
        );
        assert_eq!(repository_name("flotilla-prod"), "flotilla-prod");
    }
}
