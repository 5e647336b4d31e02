# nginx for the proxy benchmarks (sourced; needs $work, a scratch directory).
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# static_site: a 512-byte file at $work/www/index.html, as a real site's health page or small
# asset would be; nginx workers drop root privileges, so they must be able to read it.
static_site() {
  mkdir -p "$work/www"
  head -c 512 /dev/zero | tr '\0' 'x' > "$work/www/index.html"
  chmod 755 "$work" "$work/www"; chmod 644 "$work/www/index.html"
}
# nginx_conf NAME MAIN SERVERS: writes $work/NAME.conf, with the main-context directives MAIN
# (daemon, workers) and the http-context SERVERS; every path nginx writes is under $work.
nginx_conf() {
  cat > "$work/$1.conf" <<CONF
$2
pid $work/$1.pid;
error_log $work/$1.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/$1-body;
  proxy_temp_path $work/$1-proxy;
  fastcgi_temp_path $work/$1-fastcgi;
  uwsgi_temp_path $work/$1-uwsgi;
  scgi_temp_path $work/$1-scgi;
  keepalive_requests 1000000;
  $3
}
CONF
}
