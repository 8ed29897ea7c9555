//! Images: a prebuilt image URI is used as it is; otherwise the app directory is built with the
//! `docker` CLI, tagged with the deployment id, and pushed to the baseline's ECR repository after
//! logging in with an ECR authorization token.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_ecr::types::ImageIdentifier;
use flotilla_core::DeploymentId;
use flotilla_engine::ports::{ErrorKind, ImageRef, ImageRequest, ImageSource, PortError};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::ctx::Ctx;
use crate::error::port_error;

/// The [`ImageSource`] port: prebuilt URIs, or docker build + ECR push.
pub struct EcrImages {
    ctx: Arc<Ctx>,
    docker: String,
}

impl EcrImages {
    pub(crate) fn new(ctx: Arc<Ctx>, docker: String) -> Self {
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

    /// Whether the repository already has an image tagged `id` (a re-run after a crash).
    async fn pushed(&self, repository: &str, id: &DeploymentId) -> Result<bool, PortError> {
        let name = repository_name(repository);
        match self
            .ctx
            .clients
            .ecr
            .describe_images()
            .repository_name(name)
            .image_ids(ImageIdentifier::builder().image_tag(id.as_str()).build())
            .send()
            .await
        {
            Ok(out) => Ok(!out.image_details().is_empty()),
            Err(e) => {
                let err = port_error("look up image", &format!("{repository}:{id}"), e);
                if err.kind == ErrorKind::NotFound {
                    Ok(false)
                } else {
                    Err(err)
                }
            }
        }
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
        if self.pushed(&repository, id).await? {
            return Ok(ImageRef(image));
        }
        self.check_docker().await?;
        let dir_str = dir.to_string_lossy().into_owned();
        self.docker(&["build", "--tag", &image, &dir_str], None, "build image")
            .await?;
        self.login(&repository).await?;
        self.docker(&["push", &image], None, "push image").await?;
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
