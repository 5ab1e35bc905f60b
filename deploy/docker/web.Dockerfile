# Internal web server for the compose lab: nginx (Debian's nginx-light, named in
# deploy/install-deps.sh) serving address-book files and meeting content, the reverse proxy's
# upstream. Stands in for the internal web services of a real deployment.
#   docker build -f deploy/docker/web.Dockerfile -t edge-suite/web:0.1 .
FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /dev/stderr /var/log/nginx/error.log && ln -sf /dev/stdout /var/log/nginx/access.log
COPY deploy/compose/web/nginx.conf /etc/nginx/nginx.conf
COPY deploy/compose/web/htdocs/ /srv/www/
EXPOSE 80/tcp 443/tcp
HEALTHCHECK --interval=10s --timeout=3s CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/80"]
CMD ["nginx", "-g", "daemon off;"]
