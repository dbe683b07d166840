/*
 * tls_certgen.c - makes the certificates and keys the TLS tests use.
 *
 *   tls_certgen DIR
 *
 * Creates DIR (like mkdir -p) and writes, fresh on every run, a test CA,
 * leaf certificates signed by it (server EC and RSA, client, expired, wrong
 * name, SNI names), a self-signed server, a second unrelated CA with a
 * client of its own, an encrypted copy of the server key and DH parameters.
 * Nothing is downloaded or checked in, so certificates never expire in the
 * repository and every build tests against its own CA.
 *
 * Each file is written under a temporary name and renamed into place, so a
 * test reading concurrently sees the old file or the new one, never half a
 * file. Only OpenSSL 3 EVP/X509 calls are used (no deprecated API), and
 * everything is freed, so the program is clean under ASan and valgrind.
 * Exits 0, or prints what failed and exits 1.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define DAY_SECONDS (24L * 60L * 60L)
#define ENC_KEY_PASS "libem-pass"

/* What to issue. Validity is in days relative to now. */
typedef struct cert_spec {
    const char *stem;     /* writes stem.pem and stem.key */
    const char *cn;       /* subject common name */
    const char *san;      /* subjectAltName, or NULL */
    const char *eku;      /* extendedKeyUsage, or NULL */
    int is_ca;            /* CA:TRUE, keyCertSign + cRLSign */
    int rsa;              /* RSA-2048 instead of EC P-256 */
    long from_days;       /* notBefore */
    long until_days;      /* notAfter */
    const char *issuer;   /* stem of an earlier CA; NULL: self-signed */
    const char *enc_stem; /* also write stem.key encrypted as enc_stem.key */
} cert_spec;

/* An issued certificate with its key, kept while later ones need it. */
typedef struct issued {
    const char *stem;
    X509 *cert;
    EVP_PKEY *key;
} issued;

#define SERVER_SAN "DNS:localhost,IP:127.0.0.1,IP:::1"

static const cert_spec specs[] = {
    {.stem = "ca",
     .cn = "libem test CA",
     .is_ca = 1,
     .from_days = -1,
     .until_days = 3650},
    {.stem = "ca2",
     .cn = "libem other CA",
     .is_ca = 1,
     .from_days = -1,
     .until_days = 3650},
    {.stem = "server",
     .cn = "localhost",
     .san = SERVER_SAN,
     .eku = "serverAuth",
     .from_days = -1,
     .until_days = 365,
     .issuer = "ca",
     .enc_stem = "server-enc"},
    {.stem = "server-rsa",
     .cn = "localhost",
     .san = SERVER_SAN,
     .eku = "serverAuth",
     .rsa = 1,
     .from_days = -1,
     .until_days = 365,
     .issuer = "ca"},
    {.stem = "client",
     .cn = "libem client",
     .eku = "clientAuth",
     .from_days = -1,
     .until_days = 365,
     .issuer = "ca"},
    {.stem = "expired",
     .cn = "localhost",
     .san = SERVER_SAN,
     .eku = "serverAuth",
     .from_days = -30,
     .until_days = -1,
     .issuer = "ca"},
    {.stem = "other",
     .cn = "other.example",
     .san = "DNS:other.example",
     .eku = "serverAuth",
     .from_days = -1,
     .until_days = 365,
     .issuer = "ca"},
    {.stem = "selfsigned",
     .cn = "localhost",
     .san = SERVER_SAN,
     .eku = "serverAuth",
     .from_days = -1,
     .until_days = 365},
    {.stem = "alpha",
     .cn = "alpha.test",
     .san = "DNS:alpha.test",
     .eku = "serverAuth",
     .from_days = -1,
     .until_days = 365,
     .issuer = "ca"},
    {.stem = "beta",
     .cn = "*.beta.test",
     .san = "DNS:*.beta.test",
     .eku = "serverAuth",
     .from_days = -1,
     .until_days = 365,
     .issuer = "ca"},
    {.stem = "client2",
     .cn = "libem client2",
     .eku = "clientAuth",
     .from_days = -1,
     .until_days = 365,
     .issuer = "ca2"},
};

#define SPEC_COUNT (sizeof specs / sizeof specs[0])

/* Prints msg and OpenSSL's queued errors; returns -1 for the caller. */
static int fail(const char *msg, const char *what)
{
    fprintf(stderr, "tls_certgen: %s%s%s\n", msg, what ? ": " : "",
            what ? what : "");
    ERR_print_errors_fp(stderr);
    return -1;
}

/* ---- files ----------------------------------------------------------- */

/* mkdir -p: creates path and its missing parents. */
static int make_dirs(const char *path)
{
    char buf[4096];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof buf)
        return fail("bad directory name", path);
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char saved = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST) {
            fprintf(stderr, "tls_certgen: mkdir %s: %s\n", buf,
                    strerror(errno));
            return -1;
        }
        buf[i] = saved;
    }
    struct stat st;
    if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode))
        return fail("not a directory", path);
    return 0;
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Writes the memory BIO's bytes to dir/name through a temporary file in
 * the same directory and a rename. */
static int publish(const char *dir, const char *name, BIO *mem, mode_t mode)
{
    char path[4096], tmp[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp.%ld", dir, name, (long)getpid());
    char *data = NULL;
    long len = BIO_get_mem_data(mem, &data);
    if (len <= 0)
        return fail("nothing to write for", name);

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) {
        fprintf(stderr, "tls_certgen: open %s: %s\n", tmp, strerror(errno));
        return -1;
    }
    int bad = write_all(fd, data, (size_t)len) < 0;
    int saved = errno;
    if (close(fd) < 0 && !bad) {
        bad = 1;
        saved = errno;
    }
    if (!bad && rename(tmp, path) < 0) {
        bad = 1;
        saved = errno;
    }
    if (bad) {
        unlink(tmp);
        fprintf(stderr, "tls_certgen: writing %s: %s\n", path, strerror(saved));
        return -1;
    }
    return 0;
}

/* Writes an object through a PEM writer into dir/name. */
typedef int (*pem_writer)(BIO *out, const void *obj);

static int write_pem(const char *dir, const char *name, pem_writer writer,
                     const void *obj, mode_t mode)
{
    BIO *mem = BIO_new(BIO_s_mem());
    if (!mem)
        return fail("out of memory", NULL);
    int rc = writer(mem, obj) ? publish(dir, name, mem, mode)
                              : fail("cannot encode", name);
    BIO_free(mem);
    return rc;
}

static int pem_cert(BIO *out, const void *obj)
{
    return PEM_write_bio_X509(out, (X509 *)obj);
}

static int pem_key(BIO *out, const void *obj)
{
    return PEM_write_bio_PrivateKey(out, (const EVP_PKEY *)obj, NULL, NULL, 0,
                                    NULL, NULL);
}

static int pem_key_encrypted(BIO *out, const void *obj)
{
    return PEM_write_bio_PKCS8PrivateKey(out, (const EVP_PKEY *)obj,
                                         EVP_aes_256_cbc(), ENC_KEY_PASS,
                                         (int)strlen(ENC_KEY_PASS), NULL, NULL);
}

static int pem_params(BIO *out, const void *obj)
{
    return PEM_write_bio_Parameters(out, (const EVP_PKEY *)obj);
}

/* ---- certificates ---------------------------------------------------- */

static EVP_PKEY *new_key(int rsa)
{
    return rsa ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");
}

/* A random positive 63-bit serial number. */
static int set_serial(X509 *cert)
{
    BIGNUM *bn = BN_new();
    int ok = bn && BN_rand(bn, 63, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) &&
             BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
    BN_free(bn);
    return ok ? 0 : -1;
}

static int set_validity(X509 *cert, long from_days, long until_days)
{
    int ok =
        X509_time_adj_ex(X509_getm_notBefore(cert), (int)from_days, 0, NULL) &&
        X509_time_adj_ex(X509_getm_notAfter(cert), (int)until_days, 0, NULL);
    return ok ? 0 : -1;
}

static int set_subject(X509 *cert, const char *cn)
{
    X509_NAME *name = X509_get_subject_name(cert);
    int ok = X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                        (const unsigned char *)"libem tests",
                                        -1, -1, 0) &&
             X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                        (const unsigned char *)cn, -1, -1, 0);
    return ok ? 0 : -1;
}

/* Adds one extension in openssl.cnf syntax; issuer may be cert itself. */
static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, &ctx, nid, value);
    if (!ext)
        return fail("bad extension", value);
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : fail("cannot add extension", value);
}

static int add_extensions(X509 *cert, X509 *issuer, const cert_spec *s)
{
    const char *usage = s->is_ca ? "critical,keyCertSign,cRLSign"
                        : s->rsa ? "critical,digitalSignature,keyEncipherment"
                                 : "critical,digitalSignature";
    if (add_ext(cert, issuer, NID_basic_constraints,
                s->is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE") < 0 ||
        add_ext(cert, issuer, NID_key_usage, usage) < 0 ||
        add_ext(cert, issuer, NID_subject_key_identifier, "hash") < 0)
        return -1;
    if (issuer != cert &&
        add_ext(cert, issuer, NID_authority_key_identifier, "keyid:always") < 0)
        return -1;
    if (s->san && add_ext(cert, issuer, NID_subject_alt_name, s->san) < 0)
        return -1;
    if (s->eku && add_ext(cert, issuer, NID_ext_key_usage, s->eku) < 0)
        return -1;
    return 0;
}

/* Builds and signs the certificate of spec s for key; issuer NULL signs
 * it with key itself. Returns the certificate or NULL. */
static X509 *make_cert(const cert_spec *s, EVP_PKEY *key, const issued *issuer)
{
    X509 *cert = X509_new();
    if (!cert)
        return NULL;
    X509 *signer_cert = issuer ? issuer->cert : cert;
    EVP_PKEY *signer_key = issuer ? issuer->key : key;
    int ok = X509_set_version(cert, X509_VERSION_3) && set_serial(cert) == 0 &&
             set_validity(cert, s->from_days, s->until_days) == 0 &&
             set_subject(cert, s->cn) == 0 &&
             X509_set_issuer_name(cert, X509_get_subject_name(signer_cert)) &&
             X509_set_pubkey(cert, key) &&
             add_extensions(cert, signer_cert, s) == 0 &&
             X509_sign(cert, signer_key, EVP_sha256()) > 0;
    if (!ok) {
        X509_free(cert);
        return NULL;
    }
    return cert;
}

static const issued *find_issued(const issued *done, size_t n, const char *stem)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(done[i].stem, stem) == 0)
            return &done[i];
    return NULL;
}

/* Writes stem.pem, stem.key and, when asked, the encrypted key. */
static int write_issued(const char *dir, const cert_spec *s, const issued *it)
{
    char name[256];
    snprintf(name, sizeof name, "%s.pem", s->stem);
    if (write_pem(dir, name, pem_cert, it->cert, 0644) < 0)
        return -1;
    snprintf(name, sizeof name, "%s.key", s->stem);
    if (write_pem(dir, name, pem_key, it->key, 0600) < 0)
        return -1;
    if (!s->enc_stem)
        return 0;
    snprintf(name, sizeof name, "%s.key", s->enc_stem);
    return write_pem(dir, name, pem_key_encrypted, it->key, 0600);
}

/* Issues spec s into *out (owned by the caller) and writes its files. */
static int issue(const char *dir, const cert_spec *s, const issued *done,
                 size_t ndone, issued *out)
{
    const issued *issuer = NULL;
    if (s->issuer && !(issuer = find_issued(done, ndone, s->issuer)))
        return fail("unknown issuer", s->issuer);
    out->stem = s->stem;
    out->key = new_key(s->rsa);
    if (!out->key)
        return fail("cannot generate the key for", s->stem);
    out->cert = make_cert(s, out->key, issuer);
    if (!out->cert)
        return fail("cannot make the certificate", s->stem);
    return write_issued(dir, s, out);
}

/* ---- DH parameters --------------------------------------------------- */

/* The named RFC 7919 group ffdhe2048: instant, unlike generating primes. */
static int write_dhparam(const char *dir)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "DH", NULL);
    EVP_PKEY *params = NULL;
    int ok = ctx && EVP_PKEY_paramgen_init(ctx) > 0 &&
             EVP_PKEY_CTX_set_group_name(ctx, "ffdhe2048") > 0 &&
             EVP_PKEY_paramgen(ctx, &params) > 0;
    int rc = ok ? write_pem(dir, "dhparam.pem", pem_params, params, 0644)
                : fail("cannot make DH parameters", "ffdhe2048");
    EVP_PKEY_free(params);
    EVP_PKEY_CTX_free(ctx);
    return rc;
}

/* ---- main ------------------------------------------------------------ */

static int generate_all(const char *dir)
{
    issued done[SPEC_COUNT];
    memset(done, 0, sizeof done);
    size_t n = 0;
    int rc = 0;
    for (; n < SPEC_COUNT && rc == 0; n++)
        rc = issue(dir, &specs[n], done, n, &done[n]);
    for (size_t i = 0; i < n; i++) {
        X509_free(done[i].cert);
        EVP_PKEY_free(done[i].key);
    }
    return rc < 0 ? -1 : write_dhparam(dir);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 1;
    }
    if (make_dirs(argv[1]) < 0 || generate_all(argv[1]) < 0) {
        fprintf(stderr, "tls_certgen: failed; %s is incomplete\n", argv[1]);
        return 1;
    }
    return 0;
}
